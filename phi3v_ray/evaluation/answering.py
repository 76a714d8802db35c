"""Answer product photos with one checkpoint: the library call behind `phi3v-ray predict`.

The photos are preprocessed by the same rule as an evaluation split (phi3v_ray.data.examples: the crop budget and
tokenizer of the checkpoint's base ModelSection) and answered by the evaluation predictor (same loading, same greedy
generation), so an answer here is the answer the leaderboard scored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from phi3v_ray.data.answers import ParsedAnswer, parse_answer
from phi3v_ray.errors import CheckpointError, DataError
from phi3v_ray.evaluation.discovery import single_checkpoint
from phi3v_ray.evaluation.predictor import CheckpointPredictor, ContestantSpec, base_model_kwargs


@dataclass(frozen=True)
class Answer:
    """One photo's generated answer and what could be read from it."""

    image: str
    text: str
    parsed: ParsedAnswer


def _encode_images(images: Sequence[str | os.PathLike[str]], config: Any) -> list[dict[str, Any]]:
    """Prompt-only examples for the photos, preprocessed exactly as the evaluation split of `config` would be."""
    from phi3v_ray.data.examples import processor_settings
    from phi3v_ray.data.images import decode_image

    settings = processor_settings(config)
    processor = settings.build_processor()
    examples = []
    for image in images:
        decoded = decode_image(
            str(image), max_pixels=settings.max_pixels, num_crops=processor.num_crops, crop_size=processor.crop_size
        )
        if not decoded.ok:
            raise DataError(f"{image}: cannot use this image ({decoded.reason}: {decoded.detail})")
        examples.append(processor.encode_product(decoded.image))
    return examples


def answer_images(
    checkpoint: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    *,
    max_new_tokens: int = 48,
) -> list[Answer]:
    """Load the checkpoint once and answer every photo in one batch, in the order given."""
    from phi3v_ray.config import config_from_dict

    info = single_checkpoint(checkpoint)
    spec = ContestantSpec.of_checkpoint(info)
    config = config_from_dict({"model": info.base_model.model_dump(mode="json")}, source=str(info.path))
    examples = _encode_images(images, config)
    predictor = CheckpointPredictor(
        **base_model_kwargs(info.base_model), contestants=[spec.to_dict()], max_new_tokens=max_new_tokens
    )
    if spec.name in predictor.load_errors:
        raise CheckpointError(f"{info.path}: {predictor.load_errors[spec.name]}")
    batch = predictor.processor.collate(examples, padding_side="left")
    batch.pop("labels", None)
    texts = predictor.answers_for(spec, batch)
    return [Answer(str(image), text, parse_answer(text)) for image, text in zip(images, texts, strict=True)]
