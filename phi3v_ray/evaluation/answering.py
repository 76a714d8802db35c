"""Answer product photos with one checkpoint: the library call behind `phi3v-ray predict`.

The photos are preprocessed by the same rule as an evaluation split (phi3v_ray.data.examples: the crop budget and
tokenizer of the checkpoint's base ModelSection) and answered by the evaluation predictor (same loading, same greedy
generation), so an answer here is the answer the leaderboard scored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phi3v_ray.checkpoint import local_checkpoint
from phi3v_ray.data.answers import ParsedAnswer, parse_answer
from phi3v_ray.errors import CheckpointError, ConfigError, DataError
from phi3v_ray.evaluation.discovery import CheckpointInfo, discover_checkpoints
from phi3v_ray.evaluation.predictor import CheckpointPredictor, ContestantSpec, base_model_kwargs
from phi3v_ray.storage import is_uri

URL_PREFIXES = ("http://", "https://", "ftp://")


@dataclass(frozen=True)
class Answer:
    """One photo's generated answer and what could be read from it, or why the photo could not be used."""

    image: str
    text: str = ""
    parsed: ParsedAnswer | None = None
    problem: str | None = None  # set instead of text/parsed when the photo is unusable

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record (for `predict --json`): the fields read from the answer, or the problem."""
        if self.problem is not None or self.parsed is None:
            return {"image": self.image, "ok": False, "problem": self.problem}
        parsed = self.parsed
        return {
            "image": self.image,
            "ok": True,
            "answer": self.text,
            "product": parsed.title,
            "category": parsed.category,
            "full_price": parsed.full_price,
            "parse_error": parsed.error,
        }


def image_problem(image: str | os.PathLike[str]) -> str | None:
    """Why a photo argument cannot be read, found without opening it (so before any model loads); None if it may."""
    text = os.fspath(image)
    if text.lower().startswith(URL_PREFIXES):
        return (
            "web URLs are not accepted; download the photo and pass its path (or an s3:// / gs:// object URI)"
        )
    if is_uri(text):
        return None  # object URIs are read by decode_image; a missing object is reported when it is opened
    if os.path.isdir(text):
        return "is a directory; expected an image file"
    if not os.path.exists(text):
        return "no such file"
    if os.path.getsize(text) == 0:
        return "is empty (0 bytes)"
    return None


@dataclass(frozen=True)
class ChosenCheckpoint:
    """The checkpoint that will answer, and (when a sweep or trial directory was given) which one and why."""

    info: CheckpointInfo
    note: str | None


def choose_checkpoint(directory: str | os.PathLike[str]) -> ChosenCheckpoint:
    """The checkpoint at `directory`; for a sweep or trial directory, its best usable one, saying which and why.

    Best is the lowest `val_loss` in meta.json's metrics (what a sweep ranks by); without any, the highest step.
    Broken checkpoints below the directory are skipped and counted in the note.
    """
    good, broken = discover_checkpoints([directory])
    found = [*good, *broken]
    is_one = len(found) == 1 and Path(found[0].path).resolve() == local_checkpoint(directory).resolve()
    if is_one and broken:
        raise CheckpointError(f"{broken[0].path}: {broken[0].reason}")
    if not good:
        raise CheckpointError(
            f"{directory}: none of its {len(broken)} checkpoint(s) can be used; e.g. {broken[0].path}: "
            f"{broken[0].reason}"
        )
    if is_one:
        return ChosenCheckpoint(good[0], None)
    scored = [info for info in good if "val_loss" in info.meta.metrics]
    if scored:
        best = min(scored, key=lambda info: info.meta.metrics["val_loss"])
        why = f"lowest val_loss {best.meta.metrics['val_loss']:.4g} of {len(good)} usable checkpoint(s)"
    else:
        best = max(good, key=lambda info: info.meta.step)
        why = (
            f"no val_loss recorded, so the latest, step {best.meta.step}, of {len(good)} usable checkpoint(s)"
        )
    skipped = f"; {len(broken)} broken one(s) skipped" if broken else ""
    return ChosenCheckpoint(best, f"{directory} is not one checkpoint: using {best.path} ({why}{skipped})")


def _encode_images(
    images: Sequence[str | os.PathLike[str]], config: Any, problems: dict[int, str | None]
) -> dict[int, dict[str, Any]]:
    """Prompt-only examples (by position) for the usable photos, preprocessed as the evaluation split of `config`
    would be; a photo that fails to decode gets its reason in `problems` instead."""
    from phi3v_ray.data.examples import processor_settings
    from phi3v_ray.data.images import decode_image

    settings = processor_settings(config)
    processor = settings.build_processor()
    examples = {}
    for index, image in enumerate(images):
        if problems[index]:
            continue
        decoded = decode_image(
            str(image),
            max_pixels=settings.max_pixels,
            num_crops=processor.num_crops,
            crop_size=processor.crop_size,
        )
        if not decoded.ok:
            problems[index] = f"cannot use this image ({decoded.reason}: {decoded.detail})"
            continue
        examples[index] = processor.encode_product(decoded.image)
    return examples


def answer_images(
    checkpoint: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    *,
    max_new_tokens: int = 48,
    echo: Callable[[str], None] | None = None,
) -> list[Answer]:
    """Load the checkpoint once and answer every usable photo in one batch; unusable ones carry their problem.

    Answers come back in the order given. Photos that cannot be used (missing, a URL, not an image) are found first,
    so the others are still answered, and when none is usable the model is never loaded. `echo` receives the note
    saying which checkpoint of a sweep directory was chosen.
    """
    from phi3v_ray.config import config_from_dict

    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens: expected a whole number of at least 1, got {max_new_tokens}")
    problems = {index: image_problem(image) for index, image in enumerate(images)}
    if all(problems.values()):
        raise DataError(_no_usable_photo(images, problems))
    chosen = choose_checkpoint(checkpoint)
    if chosen.note and echo:
        echo(chosen.note)
    info = chosen.info
    spec = ContestantSpec.of_checkpoint(info)
    config = config_from_dict({"model": info.base_model.model_dump(mode="json")}, source=str(info.path))
    examples = _encode_images(images, config, problems)
    if not examples:
        raise DataError(_no_usable_photo(images, problems))
    predictor = CheckpointPredictor(
        **base_model_kwargs(info.base_model), contestants=[spec.to_dict()], max_new_tokens=max_new_tokens
    )
    if spec.name in predictor.load_errors:
        raise CheckpointError(f"{info.path}: {predictor.load_errors[spec.name]}")
    batch = predictor.processor.collate(list(examples.values()), padding_side="left")
    batch.pop("labels", None)
    texts = dict(zip(examples, predictor.answers_for(spec, batch), strict=True))
    return [
        Answer(str(image), texts[index], parse_answer(texts[index]))
        if index in texts
        else Answer(str(image), problem=problems[index])
        for index, image in enumerate(images)
    ]


def _no_usable_photo(images: Sequence[str | os.PathLike[str]], problems: dict[int, str | None]) -> str:
    """One line naming every photo and why none can be used."""
    reasons = "; ".join(f"{os.fspath(images[i])}: {problem}" for i, problem in problems.items() if problem)
    return f"no usable photo among the {len(images)} given: {reasons}"
