"""The processor's defaults are the official checkpoint's, and its size arithmetic refuses what it cannot do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from phi3v_ray.errors import DataError
from phi3v_ray.model.geometry import hd_canvas_size, image_tokens_for_canvas, num_image_tokens
from phi3v_ray.model.processing import hd_canvas


@pytest.fixture(scope="module")
def official(official_files: Path) -> dict:
    preprocessor = json.loads((official_files / "preprocessor_config.json").read_text())
    config = json.loads((official_files / "config.json").read_text())
    vision = config.get("img_processor", {}) or {}
    return {
        "num_crops": preprocessor["num_crops"],
        "crop_size": 336,
        "patch_size": 14,
        "num_img_tokens": preprocessor["num_img_tokens"],
        "image_dim_out": vision.get("image_dim_out"),
    }


def test_defaults_are_the_official_processor_settings(official: dict) -> None:
    # 144 tokens per crop = (336 / 14 / 2)**2 merged tokens
    assert (official["crop_size"] // official["patch_size"] // 2) ** 2 == official["num_img_tokens"]
    for width, height in [(1000, 300), (640, 480), (300, 1000), (5000, 5000)]:
        explicit = num_image_tokens(
            width=width,
            height=height,
            num_crops=official["num_crops"],
            crop_size=official["crop_size"],
            patch_size=official["patch_size"],
        )
        assert num_image_tokens(width=width, height=height) == explicit
        canvas = hd_canvas_size(width, height, official["num_crops"], official["crop_size"])
        assert hd_canvas_size(width, height) == canvas
        assert image_tokens_for_canvas(*canvas) == image_tokens_for_canvas(
            *canvas, official["crop_size"], official["patch_size"]
        )


def test_default_hd_canvas_uses_sixteen_crops_of_336() -> None:
    canvas = hd_canvas(Image.new("RGB", (2000, 2000), (10, 20, 30)))
    assert canvas.shape == (3, 4 * 336, 4 * 336)  # a square image at 16 crops: a 4×4 grid


@pytest.mark.parametrize(("width", "height"), [(0, 5), (5, 0), (0, 0)])
def test_an_empty_image_size_is_refused(width: int, height: int) -> None:
    with pytest.raises(DataError, match="the image is empty"):
        hd_canvas_size(width, height)


def test_a_non_integer_aspect_ratio_keeps_its_exact_float_ratio() -> None:
    # 1000×300 at 16 crops: scale 6 (6·ceil(6/3.33) = 12 ≤ 16 < 7·3), so the long side is 6·336 = 2016 and the
    # short side int(2016 / 3.333…) = 604, padded to 2·336.
    assert hd_canvas_size(1000, 300) == (672, 2016)
    assert hd_canvas_size(300, 1000) == (2016, 672)
    canvas = hd_canvas(Image.new("RGB", (1000, 300), (0, 0, 0)))
    dark_rows = np.flatnonzero((canvas[0] == 0).all(axis=1))
    assert len(dark_rows) == 604  # the resized picture, between white padding
    assert dark_rows[0] == int((672 - 604) / 2)


def test_padding_share_counts_the_positions_collation_pads() -> None:
    from phi3v_ray.model.processing import padding_share

    batch = [{"input_ids": [1, 2, 3]}, {"input_ids": [1, 2, 3, 4, 5]}]
    assert padding_share(batch) == pytest.approx(2 / 10)
    assert padding_share(batch, pad_to_multiple_of=1) == pytest.approx(2 / 10)
    assert padding_share(batch, pad_to_multiple_of=2) == pytest.approx(4 / 12)  # padded to 6
    assert padding_share(batch, pad_to_multiple_of=8) == pytest.approx(8 / 16)
    assert padding_share([]) == 0.0


def test_group_by_grid_orders_by_canvas_area_then_height_then_width_then_length() -> None:
    from phi3v_ray.errors import ConfigError
    from phi3v_ray.model.processing import group_by_grid

    examples = [
        {"name": "big", "image_size": (672, 672), "input_ids": [1]},
        {"name": "wide-long", "image_size": (336, 672), "input_ids": [1, 2, 3]},
        {"name": "tall", "image_size": (672, 336), "input_ids": [1]},
        {"name": "wide-short", "image_size": (336, 672), "input_ids": [1]},
        {"name": "multi", "image_sizes": [(336, 336), (336, 1008)], "input_ids": [1]},  # largest: 336×1008
        {"name": "no-image", "input_ids": [1, 2]},
    ]
    batches = group_by_grid(examples, batch_size=4)
    assert [[e["name"] for e in batch] for batch in batches] == [
        ["no-image", "wide-short", "wide-long", "tall"],
        ["multi", "big"],
    ]
    with pytest.raises(ConfigError, match="batch_size: found 0"):
        group_by_grid(examples, batch_size=0)


@pytest.fixture(scope="module")
def tiny():
    from phi3v_ray.model.processing import Phi3VProcessor
    from phi3v_ray.model.tokenizer import tiny_tokenizer

    return Phi3VProcessor(tiny_tokenizer())


def test_a_processor_defaults_to_the_official_crop_settings(tiny, official: dict) -> None:
    assert (tiny.num_crops, tiny.crop_size, tiny.patch_size) == (
        official["num_crops"],
        official["crop_size"],
        official["patch_size"],
    )


def test_collation_pads_to_the_requested_multiple_and_keeps_labels_when_any_example_has_them(tiny) -> None:
    image = Image.new("RGB", (40, 30), (5, 6, 7))
    # an answer of odd length, so that padding to a multiple of 2 shows
    candidates = (
        tiny.encode_product(image, answer=f"Product: {'A' * k}, Category: B, Full Price: 1.0")
        for k in range(1, 9)
    )
    with_answer = next(encoded for encoded in candidates if len(encoded["input_ids"]) % 2 == 1)
    prompt_only = tiny.encode_product(image)
    prompt_only["labels"] = None
    longest = len(with_answer["input_ids"])
    assert longest > len(prompt_only["input_ids"])
    batch = tiny.collate([prompt_only, with_answer], pad_to_multiple_of=2)
    assert batch["input_ids"].shape[1] == longest + 1
    assert sorted(batch["attention_mask"].unique().tolist()) == [0, 1]
    assert int(batch["attention_mask"][1].sum()) == longest
    assert batch.get("labels") is not None
    assert (batch["labels"][0] == -100).all() and (batch["labels"][1] != -100).any()
    assert tiny.collate([with_answer], pad_to_multiple_of=1)["input_ids"].shape[1] == longest


def test_a_tokenizer_without_a_pad_token_pads_with_endoftext() -> None:
    from phi3v_ray.model.processing import Phi3VProcessor
    from phi3v_ray.model.tokenizer import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    processor = Phi3VProcessor(tokenizer)
    assert processor.pad_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_decode_drops_ignored_and_image_ids(tiny) -> None:
    ids = tiny.tokenizer("Lola Bag")["input_ids"][1:]
    assert tiny.decode(torch.tensor([-100, *ids, tiny.image_token_id])) == tiny.decode(ids)
    assert tiny.decode(ids) == "Lola Bag"
