"""Installed as the package `phi3v_ray.experiments` (see pyproject.toml), so the CLI finds demo.yaml in a wheel too."""
