"""Phi-3-Vision inputs: the HD canvas (uint8), prompt → ids/labels, and batch collation (sizes: model/geometry.py).

The official processor ships each image as a float32 (num_crops+1, 3, 336, 336) tensor of normalised, zero-padded
crops. We ship the resized, white-padded canvas as uint8 instead and let the model normalise, crop and build the
global view on the device: the same numbers, a fraction of the bytes, and no padding crops to encode.
The token sequence is the official one (per-chunk `<s>`, the same chunking around `<|image_k|>`), except that the
image span is one positive `image_token_id` repeated instead of negative ids.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from phi3v_ray.errors import ConfigError, DataError
from phi3v_ray.model.geometry import (
    check_crop_settings,
    hd_resize_plan,
    image_tokens_for_canvas,
    num_image_tokens,
)

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = re.compile(r"<\|image_(\d+)\|>")


def hd_canvas(image: Image.Image, num_crops: int = 16, crop_size: int = 336) -> np.ndarray:
    """The resized, white-padded HD canvas as uint8 [3, H, W], pixel-identical to the official HD transform."""
    if not isinstance(image, Image.Image):
        raise DataError(f"image: found {type(image).__name__}, expected a PIL.Image.Image")
    width, height = image.size
    transposed, resized_w, resized_h, padded_h = hd_resize_plan(width, height, num_crops, crop_size)
    # convert("RGB") discards alpha (no compositing), exactly as the official processor does.
    # (convert() copies even an RGB image: skipped then, ~1 ms of a ~15 ms canvas; nothing below writes to it.)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if transposed:
        # Transpose before resizing, as the official code does: PIL resizes in two passes (horizontal first) with
        # uint8 rounding between them, so resizing the portrait directly would differ by ±1 in places.
        rgb = rgb.transpose(Image.Transpose.TRANSPOSE)
    resized = rgb.resize((resized_w, resized_h), Image.Resampling.BILINEAR)
    top = int((padded_h - resized_h) / 2)
    if transposed:
        # Back to portrait with PIL (a cheap C transpose); the white padding then sits left and right.
        resized = resized.transpose(Image.Transpose.TRANSPOSE)
        canvas = np.full((3, resized_w, padded_h), 255, dtype=np.uint8)
        target = (slice(None), slice(top, top + resized_h))
    else:
        canvas = np.full((3, padded_h, resized_w), 255, dtype=np.uint8)
        target = (slice(top, top + resized_h), slice(None))
    # Written channel by channel straight into the channels-first canvas: no HWC copy and no transpose copy.
    for channel, band in enumerate(resized.split()):
        canvas[(channel, *target)] = np.asarray(band, dtype=np.uint8)
    return canvas


def placeholder_numbers(text: str) -> list[int]:
    """The k of every `<|image_k|>` in text, in order of appearance."""
    return [int(match) for match in IMAGE_PLACEHOLDER.findall(text)]


def _check_placeholders(text: str, image_count: int) -> None:
    """Placeholders must be `<|image_1|>` … `<|image_n|>` once each, in order, for n images.

    The model writes image features in sequence order, so an out-of-order or repeated placeholder would put one
    image's features into another image's span.
    """
    found = placeholder_numbers(text)
    if len(found) != image_count:
        raise DataError(
            f"prompt has {len(found)} <|image_k|> placeholder(s) {found} but {image_count} image(s) were given; "
            "expected one placeholder per image"
        )
    expected = list(range(1, image_count + 1))
    if found != expected:
        raise DataError(
            f"prompt image placeholders are numbered {found}; expected {expected} "
            "(contiguous from 1, in order of appearance)"
        )


def _as_int_list(ids: Any) -> list[int]:
    """Token ids from a list, numpy array or tensor, as plain ints."""
    if isinstance(ids, torch.Tensor):
        return [int(i) for i in ids.reshape(-1).tolist()]
    return [int(i) for i in np.asarray(ids).reshape(-1).tolist()]


class Phi3VProcessor:
    """Prompt + images → model inputs (ids, labels, uint8 canvases) and generated ids → text."""

    PROMPT = "What is shown in this image?"

    def __init__(
        self,
        tokenizer: Any,
        *,
        num_crops: int = 16,
        crop_size: int = 336,
        patch_size: int = 14,
        image_token_id: int | None = None,
    ) -> None:
        check_crop_settings(num_crops, crop_size, patch_size)
        self.tokenizer = tokenizer
        self.num_crops = num_crops
        self.crop_size = crop_size
        self.patch_size = patch_size
        if image_token_id is None:
            image_token_id = tokenizer.convert_tokens_to_ids("<|image|>")
            if image_token_id is None or image_token_id == tokenizer.unk_token_id:
                raise ConfigError(
                    "image_token_id: found none (the tokenizer has no <|image|> token); expected an explicit id"
                )
        self.image_token_id = int(image_token_id)
        self.end_token_id = self._required_token_id("<|end|>")
        self.endoftext_token_id = self._required_token_id("<|endoftext|>")
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.endoftext_token_id
        self._ids_hidden_in_text = self._special_ids() | {self.image_token_id}

    @classmethod
    def from_config(cls, config: Any, tokenizer: Any) -> Phi3VProcessor:
        """A processor whose crop settings and image token match a Phi3VConfig."""
        vision_config = getattr(config, "vision_config", None)
        settings = {
            "num_crops": getattr(config, "num_crops", None),
            "crop_size": getattr(config, "crop_size", None),
            "patch_size": getattr(vision_config, "patch_size", None),
            "image_token_id": getattr(config, "image_token_id", None),
        }
        missing = sorted(name for name, value in settings.items() if value is None)
        if missing:
            raise ConfigError(
                f"model config: missing {', '.join(missing)}; expected a Phi3VConfig with them set"
            )
        return cls(tokenizer, **settings)

    def _required_token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ConfigError(f"tokenizer: token {token} not found; expected a Phi-3 tokenizer carrying it")
        return int(token_id)

    def _special_ids(self) -> set[int]:
        """Ids decode() hides: every added token flagged special, plus `</s>` (not flagged in the official files)."""
        hidden = {int(i) for i, added in self.tokenizer.added_tokens_decoder.items() if added.special}
        hidden.update(int(i) for i in self.tokenizer.all_special_ids)
        hidden.update(self.stop_token_ids)
        return hidden

    @property
    def stop_token_ids(self) -> list[int]:
        """Generation stops on any of these: `<|end|>` (end of turn), `<|endoftext|>`, `</s>`."""
        eos = self.tokenizer.convert_tokens_to_ids("</s>")
        return [self.end_token_id, self.endoftext_token_id] + ([int(eos)] if eos is not None else [])

    def prompt_text(self, question: str | None = None, image_count: int = 1) -> str:
        """The official chat-template user turn with image placeholders, ending in the assistant cue."""
        question = self.PROMPT if question is None else question
        placeholders = "".join(f"<|image_{k}|>\n" for k in range(1, image_count + 1))
        return f"<|user|>\n{placeholders}{question}<|end|>\n<|assistant|>\n"

    def image_token_count(self, width: int, height: int) -> int:
        """Image tokens for an image of width×height at this processor's settings."""
        return num_image_tokens(
            width=width,
            height=height,
            num_crops=self.num_crops,
            crop_size=self.crop_size,
            patch_size=self.patch_size,
        )

    def answer_ids(self, answer: str) -> list[int]:
        """The trained continuation: answer tokens, `<|end|>`, then `<|endoftext|>`."""
        ids = self.tokenizer(answer + "<|end|>", add_special_tokens=False)["input_ids"]
        return [int(i) for i in ids] + [self.endoftext_token_id]

    def encode(self, text: str, images: Sequence[Image.Image], answer: str | None = None) -> dict[str, Any]:
        """Token ids (image spans expanded), labels (answer only) and uint8 canvases for one prompt and its images."""
        images = list(images)
        _check_placeholders(text, len(images))
        canvases = [hd_canvas(image, self.num_crops, self.crop_size) for image in images]
        chunks = IMAGE_PLACEHOLDER.split(text)[::2]  # split() also returns the captured k between chunks
        input_ids: list[int] = []
        for index, chunk in enumerate(chunks):
            # Every chunk is tokenised on its own with `<s>`, as the official processor does (per-chunk BOS).
            input_ids.extend(int(i) for i in self.tokenizer(chunk)["input_ids"])
            if index < len(canvases):
                canvas_h, canvas_w = canvases[index].shape[1:]
                span = image_tokens_for_canvas(canvas_h, canvas_w, self.crop_size, self.patch_size)
                input_ids.extend([self.image_token_id] * span)
        labels = [IGNORE_INDEX] * len(input_ids)
        if answer is not None:
            target = self.answer_ids(answer)
            input_ids.extend(target)
            labels.extend(target)
        return {
            "input_ids": np.asarray(input_ids, dtype=np.int32),
            "labels": np.asarray(labels, dtype=np.int32),
            "pixel_values": canvases,
            "image_sizes": np.asarray([c.shape[1:] for c in canvases], dtype=np.int32).reshape(-1, 2),
        }

    def encode_product(self, image: Image.Image, answer: str | None = None) -> dict[str, Any]:
        """One product photo with the standard prompt, in the prepared-example layout (one canvas, `image_size`)."""
        encoded = self.encode(self.prompt_text(), [image], answer)
        return {
            "input_ids": encoded["input_ids"],
            "labels": encoded["labels"],
            "pixel_values": encoded["pixel_values"][0],
            "image_size": encoded["image_sizes"][0],
        }

    def _example_images(self, example: dict[str, Any], position: int) -> list[np.ndarray]:
        """The canvases of one example (single `pixel_values`+`image_size`, or lists), checked against their sizes."""
        pixels = example.get("pixel_values")
        if pixels is None:
            return []
        if "image_size" in example:
            canvases, sizes = [pixels], [example["image_size"]]
        else:
            is_single = getattr(pixels, "ndim", None) == 3
            canvases = [pixels] if is_single else list(pixels)
            sizes = example.get("image_sizes")
            sizes = [None] * len(canvases) if sizes is None else list(np.asarray(sizes).reshape(-1, 2))
        arrays = [c.numpy() if isinstance(c, torch.Tensor) else np.asarray(c) for c in canvases]
        if len(sizes) != len(arrays):
            raise DataError(f"example {position}: {len(arrays)} canvas(es) but {len(sizes)} image size(s)")
        for array, size in zip(arrays, sizes, strict=True):
            if array.ndim != 3 or array.shape[0] != 3 or array.dtype != np.uint8:
                raise DataError(
                    f"example {position}: canvas has shape {tuple(array.shape)} dtype {array.dtype}; "
                    "expected uint8 [3, H, W]"
                )
            if size is not None and tuple(int(s) for s in size) != tuple(array.shape[1:]):
                raise DataError(
                    f"example {position}: image size {tuple(int(s) for s in size)} does not match the canvas "
                    f"{tuple(array.shape[1:])}; expected the canvas (H, W)"
                )
        return arrays

    def collate(
        self,
        examples: Sequence[dict[str, Any]],
        *,
        padding_side: str = "right",
        pad_to_multiple_of: int | None = 8,
    ) -> dict[str, torch.Tensor]:
        """Pad a batch: right padding for training, left for generation; canvases zero-padded into one uint8 tensor."""
        if padding_side not in ("right", "left"):
            raise ConfigError(f"padding_side: found {padding_side!r}, expected 'right' or 'left'")
        if not examples:
            raise DataError("collate: found an empty batch, expected at least one example")
        sequences = [_as_int_list(example["input_ids"]) for example in examples]
        with_labels = any(example.get("labels") is not None for example in examples)
        length = max(len(seq) for seq in sequences)
        if pad_to_multiple_of and pad_to_multiple_of > 1:
            length = math.ceil(length / pad_to_multiple_of) * pad_to_multiple_of
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.int64)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.int64)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.int64)
        canvases: list[np.ndarray] = []
        for row, (example, seq) in enumerate(zip(examples, sequences, strict=True)):
            start = 0 if padding_side == "right" else length - len(seq)
            input_ids[row, start : start + len(seq)] = torch.tensor(seq, dtype=torch.int64)
            attention_mask[row, start : start + len(seq)] = 1
            if example.get("labels") is not None:
                example_labels = _as_int_list(example["labels"])
                if len(example_labels) != len(seq):
                    raise DataError(
                        f"example {row}: {len(example_labels)} labels for {len(seq)} input ids; expected equal lengths"
                    )
                labels[row, start : start + len(seq)] = torch.tensor(example_labels, dtype=torch.int64)
            images = self._example_images(example, row)
            self._check_image_span(row, seq, images)
            canvases.extend(images)
        batch: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if with_labels:
            batch["labels"] = labels
        if canvases:
            max_h = max(c.shape[1] for c in canvases)
            max_w = max(c.shape[2] for c in canvases)
            pixel_values = torch.zeros((len(canvases), 3, max_h, max_w), dtype=torch.uint8)
            for index, canvas in enumerate(canvases):
                pixel_values[index, :, : canvas.shape[1], : canvas.shape[2]] = torch.from_numpy(canvas)
            batch["pixel_values"] = pixel_values
            batch["image_sizes"] = torch.tensor([c.shape[1:] for c in canvases], dtype=torch.int64)
        return batch

    def _check_image_span(self, row: int, seq: list[int], images: list[np.ndarray]) -> None:
        """The image tokens must match the canvases, else the model would misplace features (e.g. num_crops drift)."""
        found = sum(1 for token in seq if token == self.image_token_id)
        needed = sum(image_tokens_for_canvas(*c.shape[1:], self.crop_size, self.patch_size) for c in images)
        if found != needed:
            sizes = [tuple(c.shape[1:]) for c in images]
            raise DataError(
                f"example {row}: holds {found} image tokens but its canvases {sizes} need {needed} at crop size "
                f"{self.crop_size}; expected the example to be encoded with this processor's settings"
            )

    def decode(self, ids: Any) -> str:
        """Text of generated ids, without special, image, pad or ignored (-100) tokens."""
        kept = [i for i in _as_int_list(ids) if i >= 0 and i not in self._ids_hidden_in_text]
        return self.tokenizer.decode(kept, skip_special_tokens=False)


def group_by_grid(examples: Sequence[dict[str, Any]], batch_size: int) -> list[list[dict[str, Any]]]:
    """Batches of examples with similar canvases and lengths, so collation pads little (length-aware batching)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size: found {batch_size}, expected >= 1")

    def sort_key(position: int) -> tuple[int, int, int, int]:
        example = examples[position]
        size = example.get("image_size")
        if size is None:
            sizes = example.get("image_sizes")
            size = (
                np.asarray(sizes).reshape(-1, 2).max(axis=0) if sizes is not None and len(sizes) else (0, 0)
            )
        canvas_h, canvas_w = (int(s) for s in size)
        return (canvas_h * canvas_w, canvas_h, canvas_w, len(example["input_ids"]))

    order = sorted(range(len(examples)), key=sort_key)  # stable: equal keys keep their input order
    return [
        [examples[i] for i in order[start : start + batch_size]] for start in range(0, len(order), batch_size)
    ]


def padding_share(batch: Sequence[dict[str, Any]], pad_to_multiple_of: int | None = None) -> float:
    """Share of the token positions that collation would fill with padding (the LM's wasted compute)."""
    lengths = [len(example["input_ids"]) for example in batch]
    if not lengths:
        return 0.0
    length = max(lengths)
    if pad_to_multiple_of and pad_to_multiple_of > 1:
        length = math.ceil(length / pad_to_multiple_of) * pad_to_multiple_of
    total = length * len(lengths)
    return (total - sum(lengths)) / total if total else 0.0
