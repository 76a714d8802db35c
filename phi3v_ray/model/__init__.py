"""Native Phi-3-Vision: configuration, model and loading (no remote code; official checkpoint keys as they are).

Exports are resolved lazily so that importing the package (e.g. for the tokenizer) does not import torch models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phi3v_ray.model.configuration import Phi3VConfig
    from phi3v_ray.model.modeling import Phi3VForCausalLM
    from phi3v_ray.model.official_config import load_config

__all__ = ["Phi3VConfig", "Phi3VForCausalLM", "load_config"]

_EXPORTS = {
    "Phi3VConfig": "phi3v_ray.model.configuration",
    "load_config": "phi3v_ray.model.official_config",
    "Phi3VForCausalLM": "phi3v_ray.model.modeling",
}


def __getattr__(name: str) -> Any:
    """Import an exported name on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'phi3v_ray.model' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
