"""The KV cache under whichever keyword the installed transformers uses.

transformers 5.24 renamed the cache argument of every forward and of `prepare_inputs_for_generation` from
`past_key_values` to `cache` (the old name is deprecated until 5.40), and `generate` now hands the cache over only
under the new name. The project supports `transformers>=5.0,<6`, so the model accepts both names, decides with one
rule which one it was given, and passes it on under the name the installed Phi-3 decoder declares. Looking at the
decoder's own signature (not at a version number) keeps this right for releases in between.
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers.models.phi3.modeling_phi3 import Phi3Model

from phi3v_ray.errors import DataError

CURRENT_NAME = "cache"
DEPRECATED_NAME = "past_key_values"

# `inspect.signature` follows `functools.wraps`, so transformers' deprecation decorators do not hide the real name.
DECODER_CACHE_KWARG: str = (
    CURRENT_NAME if CURRENT_NAME in inspect.signature(Phi3Model.forward).parameters else DEPRECATED_NAME
)


def given_cache(cache: Any, past_key_values: Any) -> Any:
    """The one cache a caller passed, under either name; both at once is a caller bug, not something to guess."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise DataError(
            f"got two different KV caches, as `{CURRENT_NAME}` and as `{DEPRECATED_NAME}`; pass one "
            f"(`{CURRENT_NAME}` on transformers >= 5.24)"
        )
    return cache if cache is not None else past_key_values


def cached_length(cache: Any) -> int:
    """Tokens already in the cache; 0 when there is none (the prefill step)."""
    return 0 if cache is None else int(cache.get_seq_length())


def as_kwargs(cache: Any) -> dict[str, Any]:
    """`{name: cache}` under the name the installed decoder (and its output classes) expect."""
    return {DECODER_CACHE_KWARG: cache}


def from_output(output: Any) -> Any:
    """The cache a transformers model output carries, read under the installed name (no deprecation warning)."""
    return getattr(output, DECODER_CACHE_KWARG, None)
