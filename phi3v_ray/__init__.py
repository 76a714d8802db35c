"""phi3v-ray: fine-tune, sweep and rank Phi-3-Vision checkpoints on product catalogs with Ray."""

__version__ = "0.1.0"
