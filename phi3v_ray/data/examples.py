"""One catalog row → one prepared example, or one reject record that says why not.

This is the per-row rule of preparation, kept apart from Ray so it can be tested (and reasoned about) one row at a
time: the row is checked (fetch status, product code, ground truth), its image decoded and HD-resized to a uint8
canvas, and the chat prompt (with the answer, unless prompt-only) tokenised. `ProcessorSettings` holds everything
needed to rebuild the processor on an actor, and everything that changes a prepared row (so it is also part of the
prepared cache's key).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from phi3v_ray.data.images import DEFAULT_MAX_PIXELS, ImageSource, decode_image
from phi3v_ray.data.schema import is_missing, parse_product_code
from phi3v_ray.errors import ConfigError, DataError

if TYPE_CHECKING:
    from phi3v_ray.config import ExperimentConfig
    from phi3v_ray.model.processing import Phi3VProcessor

# Reason codes for rows rejected before their image is looked at (image reasons live in phi3v_ray.data.images).
REASON_NOT_FETCHED = "not_fetched"
REASON_BAD_PRODUCT_CODE = "bad_product_code"
REASON_BAD_GROUND_TRUTH = "bad_ground_truth"
REASON_ENCODE_ERROR = "encode_error"
# More tokens than data.max_example_tokens: one such row can exhaust a training worker's memory.
REASON_TOO_LONG = "too_long"


@dataclass(frozen=True)
class ProcessorSettings:
    """Everything an actor needs to rebuild the processor, and everything that changes a prepared row."""

    tokenizer: str | None
    num_crops: int
    crop_size: int
    patch_size: int
    image_token_id: int
    max_pixels: int = DEFAULT_MAX_PIXELS
    tokenizer_fingerprint: str = ""
    max_example_tokens: int | None = None  # None: no limit (library callers); configs always set one

    def build_processor(self) -> Phi3VProcessor:
        """Load the tokenizer and construct the processor (once per actor)."""
        from phi3v_ray.model.processing import Phi3VProcessor
        from phi3v_ray.model.tokenizer import load_tokenizer

        return Phi3VProcessor(
            load_tokenizer(self.tokenizer),
            num_crops=self.num_crops,
            crop_size=self.crop_size,
            patch_size=self.patch_size,
            image_token_id=self.image_token_id,
        )

    def cache_fields(self) -> dict[str, Any]:
        """Settings that determine the prepared bytes; the tokenizer is named by content, not by path."""
        fields = asdict(self)
        fields.pop("tokenizer")
        return fields


def processor_settings(config: ExperimentConfig) -> ProcessorSettings:
    """Processor settings for an experiment: crop geometry from the model config, crop budget from `model.num_crops`."""
    from phi3v_ray.model.configuration import Phi3VConfig
    from phi3v_ray.model.official_config import load_config
    from phi3v_ray.model.tokenizer import load_tokenizer

    model = config.model
    model_config = load_config(model.path) if model.path else Phi3VConfig.preset(model.preset or "tiny")
    positions = int(model_config.text_config.max_position_embeddings)
    if config.data.max_example_tokens > positions:
        raise ConfigError(
            f"data.max_example_tokens: {config.data.max_example_tokens} is more than the model's "
            f"{positions} positions (max_position_embeddings); expected at most {positions}"
        )
    tokenizer_source = model.tokenizer
    if tokenizer_source is None and model.path and (Path(model.path) / "tokenizer.json").is_file():
        tokenizer_source = model.path
    tokenizer = load_tokenizer(tokenizer_source)
    return ProcessorSettings(
        tokenizer=tokenizer_source,
        num_crops=model.num_crops,
        crop_size=int(model_config.crop_size),
        patch_size=int(model_config.vision_config.patch_size),
        image_token_id=int(model_config.image_token_id),
        tokenizer_fingerprint=hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16],
        max_example_tokens=config.data.max_example_tokens,
    )


def prepare_row(
    row: dict[str, Any],
    processor: Phi3VProcessor,
    *,
    prompt_only: bool,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    image_source: ImageSource | None = None,
    max_tokens: int | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Turn one catalog row into a prepared example, or into a reject record naming why not (never raises).

    `image_source` is the row's image already fetched (phi3v_ray.data.images.prefetch_image_sources), if it was.
    `max_tokens` rejects an example longer than that (`too_long`, with its length), so counts still reconcile.
    """
    from phi3v_ray.data.answers import format_answer

    path = row.get("local_image_path")
    path_text = None if is_missing(path) else str(path)
    product_code, code_problem = parse_product_code(row.get("product_code"))

    def reject(reason: str, detail: str) -> tuple[None, dict[str, Any]]:
        return None, {
            "row_id": int(row["row_id"]),
            "product_code": product_code,
            "path": path_text,
            "reason": reason,
            "detail": detail,
        }

    status = row.get("status")
    if not is_missing(status) and str(status) != "ok":
        return reject(REASON_NOT_FETCHED, f"manifest status {status!r}")
    if product_code is None:
        return reject(REASON_BAD_PRODUCT_CODE, str(code_problem))
    title, category, full_price = row.get("title"), row.get("category3_code"), row.get("full_price")
    try:
        answer = format_answer(title, category, full_price)
    except (DataError, TypeError, ValueError) as error:
        return reject(REASON_BAD_GROUND_TRUTH, str(error))
    decoded = decode_image(
        path_text,
        max_pixels=max_pixels,
        num_crops=processor.num_crops,
        crop_size=processor.crop_size,
        source=image_source,
    )
    if not decoded.ok:
        return reject(decoded.reason or "decode_error", decoded.detail)
    try:
        encoded = processor.encode_product(decoded.image, answer=None if prompt_only else answer)
    except Exception as error:  # noqa: BLE001 - one odd image must not stop the job; it is reported instead
        return reject(REASON_ENCODE_ERROR, f"{type(error).__name__}: {error}")
    length = int(len(encoded["input_ids"]))
    if max_tokens is not None and length > max_tokens:
        return reject(REASON_TOO_LONG, f"{length} tokens; data.max_example_tokens is {max_tokens}")
    example = {
        "row_id": int(row["row_id"]),
        "product_code": product_code,
        "title": str(title),
        "category": str(category),
        "full_price": float(full_price),
        "answer": answer,
        "input_ids": encoded["input_ids"].astype(np.int32, copy=False),
        "labels": encoded["labels"].astype(np.int32, copy=False),
        "pixel_values": encoded["pixel_values"],
        "image_size": np.asarray(encoded["image_size"], dtype=np.int32),
    }
    return example, None
