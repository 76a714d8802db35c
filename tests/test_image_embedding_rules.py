"""The vision front end against the official checkpoint's numbers: CLIP normalisation, token counts, 2×2 merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from phi3v_ray.model import Phi3VConfig
from phi3v_ray.model.geometry import image_tokens_for_canvas
from phi3v_ray.model.image_embedding import Phi3VImageEmbedding


@pytest.fixture(scope="module")
def embedding() -> Phi3VImageEmbedding:
    torch.manual_seed(0)
    return Phi3VImageEmbedding(Phi3VConfig.preset("tiny")).eval()


def _official_normalisation(official_files: Path) -> tuple[list[float], list[float]]:
    config = json.loads((official_files / "preprocessor_config.json").read_text())
    return config["image_mean"], config["image_std"]


@pytest.mark.parametrize("level", [0, 255])
def test_canvases_are_normalised_with_the_official_clip_mean_and_std_per_channel(
    embedding: Phi3VImageEmbedding, official_files: Path, level: int
) -> None:
    mean, std = _official_normalisation(official_files)
    size = embedding.crop_size
    canvas = torch.full((1, 3, size, size), level, dtype=torch.uint8)
    crops = embedding._crops_and_globals(canvas, [(1, 1)])  # one crop and its global view
    assert crops.shape == (2, 3, size, size)
    for channel in range(3):
        expected = (level / 255.0 - mean[channel]) / std[channel]
        assert crops[:, channel].flatten().tolist() == pytest.approx([expected] * (2 * size * size), abs=1e-5)


def test_each_channel_keeps_its_own_normalisation(
    embedding: Phi3VImageEmbedding, official_files: Path
) -> None:
    mean, std = _official_normalisation(official_files)
    size = embedding.crop_size
    canvas = torch.zeros((1, 3, size, size), dtype=torch.uint8)
    canvas[0, 0], canvas[0, 1], canvas[0, 2] = 255, 128, 0  # red, half green, no blue
    crops = embedding._crops_and_globals(canvas, [(1, 1)])
    got = [float(crops[0, c, 0, 0]) for c in range(3)]
    want = [(v / 255.0 - m) / s for v, m, s in zip((255, 128, 0), mean, std, strict=True)]
    assert got == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize(
    ("height", "width"), [(336, 336), (672, 336), (336, 1344), (1344, 1344), (1008, 672)]
)
def test_token_count_matches_the_official_processor_formula(height: int, width: int) -> None:
    # the official image_processing_phi3_v: (h/336 * w/336 + 1) * 144 + 1 + (h/336 + 1) * 12
    rows, cols = height // 336, width // 336
    official = (rows * cols + 1) * 144 + 1 + (rows + 1) * 12
    assert image_tokens_for_canvas(height, width, crop_size=336, patch_size=14) == official


def test_crops_are_cut_row_major_and_followed_by_their_global_view(embedding: Phi3VImageEmbedding) -> None:
    size = embedding.crop_size
    canvas = torch.zeros((1, 3, 2 * size, 3 * size), dtype=torch.uint8)
    for row in range(2):
        for col in range(3):
            canvas[0, :, row * size : (row + 1) * size, col * size : (col + 1) * size] = 10 * (row * 3 + col)
    crops = embedding._crops_and_globals(canvas, [(2, 3)])
    assert crops.shape[0] == 2 * 3 + 1
    levels = [
        round(float(crop[0, 0, 0] * embedding.clip_std[0, 0, 0] + embedding.clip_mean[0, 0, 0]) * 255)
        for crop in crops[:6]
    ]
    assert levels == [0, 10, 20, 30, 40, 50]


def test_two_by_two_merge_concatenates_each_cell_row_major(embedding: Phi3VImageEmbedding) -> None:
    side, dim = 4, 2
    patches = (
        torch.arange(side * side, dtype=torch.float32).repeat_interleave(dim).reshape(1, side * side, dim)
    )
    merged = embedding._merge_2x2(patches)
    assert merged.shape == (1, 2, 2, 4 * dim)
    # cell (0, 1) holds patches (0,2), (0,3), (1,2), (1,3) = indices 2, 3, 6, 7
    assert merged[0, 0, 1, ::dim].tolist() == [2.0, 3.0, 6.0, 7.0]
    assert merged[0, 1, 0, ::dim].tolist() == [8.0, 9.0, 12.0, 13.0]


def test_token_counts_follow_each_canvas_size(embedding: Phi3VImageEmbedding) -> None:
    size, patch = embedding.crop_size, embedding.patch_size
    counts = embedding.token_counts(torch.tensor([[size, size], [2 * size, size], [size, 3 * size]]))
    assert counts == [
        image_tokens_for_canvas(h, w, crop_size=size, patch_size=patch)
        for h, w in [(size, size), (2 * size, size), (size, 3 * size)]
    ]
    assert counts[1] != counts[2]  # rows and columns are not interchangeable (a newline ends every row)


@pytest.mark.parametrize(
    ("size", "problem"),
    [
        ((0, 1), "expected positive multiples of the crop size"),
        ((1, 0), "expected positive multiples of the crop size"),
        ((1, 3), "but pixel_values is only"),  # only the width is too large
        ((3, 1), "but pixel_values is only"),
    ],
)
def test_image_sizes_outside_the_canvas_or_not_whole_crops_are_refused(
    embedding: Phi3VImageEmbedding, size: tuple[int, int], problem: str
) -> None:
    from phi3v_ray.errors import DataError

    crop = embedding.crop_size
    pixels = torch.zeros((1, 3, 2 * crop, 2 * crop), dtype=torch.uint8)
    with pytest.raises(DataError, match=problem):
        embedding(pixels, torch.tensor([[size[0] * crop, size[1] * crop]]))
