"""The tiny Phi-3-Vision forward pass: the image path, gradients, checkpointing and bad-input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from phi3v_ray.errors import DataError
from phi3v_ray.model import Phi3VConfig, Phi3VForCausalLM
from phi3v_ray.model.image_embedding import CLIP_MEAN, CLIP_STD
from phi3v_ray.model.loading import build_model

IMAGE_TOKEN = 8
CROP = 56


@pytest.fixture(scope="module")
def model() -> Phi3VForCausalLM:
    """The tiny model with non-zero separators, so a misplaced separator shows in the numbers."""
    tiny = build_model(Phi3VConfig.preset("tiny"))
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        embedding = tiny.model.vision_embed_tokens
        embedding.glb_GN.copy_(torch.randn(embedding.glb_GN.shape, generator=generator))
        embedding.sub_GN.copy_(torch.randn(embedding.sub_GN.shape, generator=generator))
    return tiny.eval()


def canvas(height: int, width: int, seed: int) -> torch.Tensor:
    """A random uint8 canvas [3, H, W]."""
    return torch.randint(
        0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def prompt_ids(
    model: Phi3VForCausalLM, size: tuple[int, int], before: list[int], after: list[int]
) -> torch.Tensor:
    """`before` + an image span as long as the crop grid needs + `after`, as one [1, T] row."""
    count = model.model.vision_embed_tokens.token_counts(torch.tensor([size]))[0]
    return torch.tensor([before + [IMAGE_TOKEN] * count + after])


def official_recipe_features(model: Phi3VForCausalLM, image: torch.Tensor) -> torch.Tensor:
    """The reference §3-4 steps written out with loops: crops, CLIP hidden_states[-2], 2×2 cells, separators."""
    embedding = model.model.vision_embed_tokens
    x = image.float() / 255.0
    x = (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    rows, cols = x.shape[1] // CROP, x.shape[2] // CROP
    crops = [
        x[:, r * CROP : (r + 1) * CROP, c * CROP : (c + 1) * CROP] for r in range(rows) for c in range(cols)
    ]
    global_view = F.interpolate(x[None], size=(CROP, CROP), mode="bicubic", align_corners=False)[0]
    clip = embedding.img_processor.vision_model
    hidden = clip(pixel_values=torch.stack([*crops, global_view]), output_hidden_states=True).hidden_states[
        -2
    ]
    patches = hidden[:, 1:]
    side = CROP // 14
    half = side // 2

    def cell(crop: int, i: int, j: int) -> torch.Tensor:
        grid = patches[crop].reshape(side, side, -1)
        return torch.cat(
            [grid[2 * i, 2 * j], grid[2 * i, 2 * j + 1], grid[2 * i + 1, 2 * j], grid[2 * i + 1, 2 * j + 1]]
        )

    newline, glb = embedding.sub_GN.flatten(), embedding.glb_GN.flatten()
    tokens = []
    for row in range(rows * half):
        for col in range(cols * half):
            tokens.append(cell((row // half) * cols + col // half, row % half, col % half))
        tokens.append(newline)
    tokens.append(glb)
    for i in range(half):
        for j in range(half):
            tokens.append(cell(rows * cols, i, j))
        tokens.append(newline)
    return embedding.img_projection(torch.stack(tokens))


@torch.no_grad()
def test_image_features_match_the_official_recipe_step_by_step(model: Phi3VForCausalLM) -> None:
    image = canvas(2 * CROP, 3 * CROP, seed=0)
    padded = torch.zeros(1, 3, 3 * CROP, 4 * CROP, dtype=torch.uint8)
    padded[0, :, : 2 * CROP, : 3 * CROP] = image
    features = model.model.vision_embed_tokens(padded, torch.tensor([[2 * CROP, 3 * CROP]]))
    expected = official_recipe_features(model, image)
    assert features.shape == expected.shape == (2 * 2 * (3 * 2 + 1) + 1 + 2 * 3, 128)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_changing_only_the_image_changes_logits_after_the_span_and_not_before(
    model: Phi3VForCausalLM,
) -> None:
    size = (CROP, 2 * CROP)
    ids = prompt_ids(model, size, before=[1, 7, 20, 21], after=[1, 30, 31, 4])
    start = 4
    first = model(
        input_ids=ids, pixel_values=canvas(*size, seed=1)[None], image_sizes=torch.tensor([size])
    ).logits
    second = model(
        input_ids=ids, pixel_values=canvas(*size, seed=2)[None], image_sizes=torch.tensor([size])
    ).logits
    torch.testing.assert_close(first[:, :start], second[:, :start], rtol=0, atol=0)
    assert (first[:, start:] - second[:, start:]).abs().amax(dim=-1).min() > 1e-4


@torch.no_grad()
def test_batch_features_land_in_each_examples_own_span(model: Phi3VForCausalLM) -> None:
    small, wide = (CROP, CROP), (CROP, 2 * CROP)
    ids_small = prompt_ids(model, small, before=[1, 7], after=[1, 30, 4])
    ids_wide = prompt_ids(model, wide, before=[1, 7], after=[1, 30, 4])
    images = [canvas(*small, seed=3), canvas(*wide, seed=4)]
    length = ids_wide.shape[1]
    batch_ids = torch.full((2, length), 3)
    batch_ids[0, : ids_small.shape[1]] = ids_small[0]
    batch_ids[1] = ids_wide[0]
    mask = (torch.arange(length) < torch.tensor([[ids_small.shape[1]], [length]])).long()
    pixels = torch.zeros(2, 3, CROP, 2 * CROP, dtype=torch.uint8)
    pixels[0, :, :, :CROP], pixels[1] = images[0], images[1]
    batched = model(
        input_ids=batch_ids, attention_mask=mask, pixel_values=pixels, image_sizes=torch.tensor([small, wide])
    ).logits
    alone_small = model(
        input_ids=ids_small, pixel_values=images[0][None], image_sizes=torch.tensor([small])
    ).logits
    alone_wide = model(
        input_ids=ids_wide, pixel_values=images[1][None], image_sizes=torch.tensor([wide])
    ).logits
    torch.testing.assert_close(batched[0, : ids_small.shape[1]], alone_small[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched[1], alone_wide[0], rtol=1e-4, atol=1e-5)


def _loss_and_grads(model: Phi3VForCausalLM) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    size = (2 * CROP, CROP)
    ids = prompt_ids(model, size, before=[1, 7], after=[1, 30, 31, 32, 4, 40, 41, 6])
    labels = torch.full_like(ids, -100)
    labels[0, -4:] = ids[0, -4:]
    model.zero_grad(set_to_none=True)
    loss = model(
        input_ids=ids,
        pixel_values=canvas(*size, seed=5)[None],
        image_sizes=torch.tensor([size]),
        labels=labels,
    ).loss
    loss.backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    return loss.detach(), grads


def test_gradients_reach_projector_separators_and_the_unfrozen_vision_tower() -> None:
    model = build_model(Phi3VConfig.preset("tiny")).train()
    _, grads = _loss_and_grads(model)
    prefix = "model.vision_embed_tokens."
    for name in ("img_projection.0.weight", "img_projection.2.weight", "glb_GN", "sub_GN"):
        assert grads[prefix + name].abs().sum() > 0, name
    clip_grads = [grad for name, grad in grads.items() if ".img_processor." in name]
    assert clip_grads and any(grad.abs().sum() > 0 for grad in clip_grads)
    patch = prefix + "img_processor.vision_model.embeddings.patch_embedding.weight"
    assert grads[patch].abs().sum() > 0

    model.model.vision_embed_tokens.img_processor.requires_grad_(False)
    _, frozen_grads = _loss_and_grads(model)
    assert not any(".img_processor." in name for name in frozen_grads)
    assert frozen_grads[prefix + "img_projection.0.weight"].abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_loss_and_gradients() -> None:
    model = build_model(Phi3VConfig.preset("tiny")).train()
    loss, grads = _loss_and_grads(model)
    assert not model.activation_checkpointing_enabled
    model.enable_activation_checkpointing()
    assert model.activation_checkpointing_enabled
    checkpointed_loss, checkpointed_grads = _loss_and_grads(model)
    torch.testing.assert_close(checkpointed_loss, loss)
    assert checkpointed_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_image_token_count_mismatch_is_a_clear_error(model: Phi3VForCausalLM) -> None:
    size = (CROP, CROP)
    ids = prompt_ids(model, size, before=[1, 7], after=[4])[:, :-3]  # the 13-token span loses two tokens
    with pytest.raises(
        DataError, match=r"input_ids hold 11 image tokens \(id 8\) but the 1 image\(s\).*need 13"
    ):
        model(input_ids=ids, pixel_values=canvas(*size, seed=0)[None], image_sizes=torch.tensor([size]))


def test_pixel_values_without_image_sizes_is_a_clear_error(model: Phi3VForCausalLM) -> None:
    size = (CROP, CROP)
    ids = prompt_ids(model, size, before=[1], after=[4])
    with pytest.raises(DataError, match="pixel_values were given without image_sizes"):
        model(input_ids=ids, pixel_values=canvas(*size, seed=0)[None])


def test_canvas_not_a_multiple_of_the_crop_size_is_a_clear_error(model: Phi3VForCausalLM) -> None:
    ids = prompt_ids(model, (CROP, CROP), before=[1], after=[4])
    with pytest.raises(
        DataError, match=r"image_sizes\[0\] is \(56, 60\); expected positive multiples of .* 56"
    ):
        model(
            input_ids=ids, pixel_values=canvas(CROP, 60, seed=0)[None], image_sizes=torch.tensor([[CROP, 60]])
        )


def test_image_tokens_without_pixel_values_is_a_clear_error(model: Phi3VForCausalLM) -> None:
    ids = prompt_ids(model, (CROP, CROP), before=[1], after=[4])
    with pytest.raises(DataError, match="input_ids hold 13 image tokens .* but no pixel_values"):
        model(input_ids=ids)
