"""One module per CLI command (see phi3v_ray/cli.py)."""
