"""The non-weight files of the official Phi-3-Vision layout: config.json, generation_config.json,
preprocessor_config.json and the tokenizer files, so tools that know `microsoft/Phi-3-vision-128k-instruct`
(vLLM's Phi3VForCausalLM, our own loader) read an export unchanged.

Nothing here names a machine path: the tokenizer's `name_or_path` bookkeeping is dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from phi3v_ray.errors import CheckpointError
from phi3v_ray.model.configuration import Phi3VConfig
from phi3v_ray.model.image_embedding import CLIP_MEAN, CLIP_STD
from phi3v_ray.model.official_config import config_to_official_dict

STOP_TOKENS = ("<|end|>", "<|endoftext|>")  # the chat turn end and the document end: generation stops on both
TOKENIZER_BOOKKEEPING = ("name_or_path", "tokenizer_file")


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def write_config(directory: Path, config: Phi3VConfig, dtype_name: str) -> None:
    """config.json with the official field names (model_type phi3_v, embd_layer, img_processor, rope_scaling)."""
    _write_json(directory / "config.json", config_to_official_dict(config, dtype=dtype_name))


def stop_token_ids(tokenizer: Any, config: Phi3VConfig) -> list[int]:
    """`<|end|>` and `<|endoftext|>` first, then any other stop id the model config names."""
    ids: list[int] = []
    for token in STOP_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise CheckpointError(f"tokenizer: has no {token} token; expected the Phi-3 chat special tokens")
        ids.append(int(token_id))
    return ids + [token for token in config.stop_token_ids if token not in ids]


def write_generation_config(directory: Path, tokenizer: Any, config: Phi3VConfig) -> None:
    """generation_config.json that stops on `<|end|>` and `<|endoftext|>` (greedy by default, as evaluated)."""
    text = config.text_config
    payload = {
        "bos_token_id": text.bos_token_id,
        "eos_token_id": stop_token_ids(tokenizer, config),
        "pad_token_id": text.pad_token_id,
        "do_sample": False,
    }
    _write_json(directory / "generation_config.json", payload)


def write_preprocessor_config(directory: Path, config: Phi3VConfig) -> None:
    """preprocessor_config.json with the official fields and `num_crops` as the checkpoint was trained."""
    payload = {
        "num_crops": config.num_crops,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "image_processor_type": "Phi3VImageProcessor",
        "processor_class": "Phi3VProcessor",
        "num_img_tokens": config.merged_tokens_per_side**2,
    }
    _write_json(directory / "preprocessor_config.json", payload)


def write_tokenizer(directory: Path, tokenizer: Any) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json, without machine paths."""
    tokenizer.save_pretrained(str(directory))
    config_path = directory / "tokenizer_config.json"
    if config_path.is_file():
        payload = json.loads(config_path.read_text(encoding="utf-8"))
        for key in TOKENIZER_BOOKKEEPING:
            payload.pop(key, None)
        _write_json(config_path, payload)


def write_non_weight_files(directory: Path, config: Phi3VConfig, tokenizer: Any, dtype_name: str) -> None:
    """Everything of the official layout except the weights."""
    write_config(directory, config, dtype_name)
    write_generation_config(directory, tokenizer, config)
    write_preprocessor_config(directory, config)
    write_tokenizer(directory, tokenizer)
