"""Phi3VImageEmbedding: uint8 HD canvases → CLIP crop features → 2×2 merge → separators → MLP projection.

Normalisation, cropping and the global view happen here, on the model's device, so the data pipeline ships uint8
canvases (4× fewer bytes than float32 crops) and only real crops go through CLIP. Every use of `glb_GN`, `sub_GN`
and `img_projection` stays inside this module's `forward`: DeepSpeed ZeRO-3 gathers a module's own parameters only
while its forward runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from phi3v_ray.errors import DataError
from phi3v_ray.model.configuration import Phi3VConfig
from phi3v_ray.model.geometry import image_tokens_for_canvas

# OpenAI CLIP normalisation constants (the official preprocessor_config.json image_mean / image_std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPVisionTower(nn.Module):
    """Holds the CLIP vision transformer under `vision_model`, the name the official checkpoint keys use.

    transformers 5.x's CLIPVisionModel keeps `embeddings`/`encoder` at its top level (older releases nested them
    in `.vision_model`); this wrapper gives `img_processor.vision_model.*` either way, so no key is renamed.
    """

    def __init__(self, vision_config: CLIPVisionConfig) -> None:
        super().__init__()
        clip = CLIPVisionModel(vision_config)
        self.vision_model = getattr(clip, "vision_model", clip)


class Phi3VImageEmbedding(nn.Module):
    """The official `model.vision_embed_tokens` module: names match the checkpoint keys (no `wte`)."""

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__()
        self.crop_size = config.crop_size
        self.patch_size = config.vision_config.patch_size
        self.merged_per_side = config.merged_tokens_per_side
        self.clip_layers_used = config.clip_layers_used()
        feature_dim = config.image_dim_out * 4  # four CLIP vectors per merged token
        hidden = config.text_config.hidden_size
        self.img_processor = CLIPVisionTower(config.vision_config)
        # Zeros like the official init; the checkpoint overwrites them.
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, feature_dim))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, feature_dim))
        self.img_projection = nn.Sequential(
            nn.Linear(feature_dim, hidden), nn.GELU(approximate="none"), nn.Linear(hidden, hidden)
        )
        self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(CLIP_STD).view(3, 1, 1), persistent=False)

    def forward(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """Projected features of every image, concatenated in image order: [total image tokens, hidden]."""
        grids = self._validate(pixel_values, image_sizes)
        crops = self._crops_and_globals(pixel_values, grids)
        # the separators and projector share one dtype, which may differ from a frozen CLIP's
        merged = self._merge_2x2(self._clip_patch_features(crops)).to(self.sub_GN.dtype)
        g, width = self.merged_per_side, merged.shape[-1]
        newline = self.sub_GN.reshape(1, 1, width)
        sequences, offset = [], 0
        for rows, cols in grids:
            local = merged[offset : offset + rows * cols]
            global_view = merged[offset + rows * cols]
            offset += rows * cols + 1
            # crop (r, c) fills rows r·g..r·g+g-1 and cols c·g..c·g+g-1 of the HD map (row-major crops)
            hd_map = (
                local.reshape(rows, cols, g, g, width)
                .permute(0, 2, 1, 3, 4)
                .reshape(rows * g, cols * g, width)
            )
            sequences.append(
                torch.cat([hd_map, newline.expand(rows * g, 1, width)], dim=1).reshape(-1, width)
            )
            sequences.append(self.glb_GN.reshape(1, width))
            sequences.append(torch.cat([global_view, newline.expand(g, 1, width)], dim=1).reshape(-1, width))
        return self._project(sequences[0::3], sequences[1::3], sequences[2::3])

    def _project(
        self, sub_maps: list[torch.Tensor], separators: list[torch.Tensor], global_maps: list[torch.Tensor]
    ) -> torch.Tensor:
        """Project every image's tokens as one padded [images, longest, width] batch, then drop the padding.

        Batched per image (not one flat token list) so that peft's mixed-adapter inference, which routes dim 0 of
        each adapted module's input to one adapter per row, can route a trained projector per image too.
        """
        per_image = [torch.cat(parts, dim=0) for parts in zip(sub_maps, separators, global_maps, strict=True)]
        lengths = [len(tokens) for tokens in per_image]
        padded = nn.utils.rnn.pad_sequence(per_image, batch_first=True)
        projected = self.img_projection(padded)
        return torch.cat([projected[i, :length] for i, length in enumerate(lengths)], dim=0)

    def token_counts(self, image_sizes: torch.Tensor) -> list[int]:
        """How many image tokens each canvas in `image_sizes` (rows of H, W) becomes."""
        return [
            image_tokens_for_canvas(int(h), int(w), self.crop_size, self.patch_size)
            for h, w in image_sizes.tolist()
        ]

    def _validate(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None
    ) -> list[tuple[int, int]]:
        """Crop grid (rows, cols) per image; a bad batch raises a DataError saying what was found and expected."""
        if image_sizes is None:
            raise DataError(
                "pixel_values were given without image_sizes; expected image_sizes [n_images, 2] (H, W)"
            )
        if pixel_values.dtype != torch.uint8 or pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise DataError(
                f"pixel_values is {pixel_values.dtype} {tuple(pixel_values.shape)}; expected uint8 "
                "[n_images, 3, H, W] canvases"
            )
        if image_sizes.dim() != 2 or image_sizes.shape != (pixel_values.shape[0], 2):
            raise DataError(
                f"image_sizes has shape {tuple(image_sizes.shape)}; expected ({pixel_values.shape[0]}, 2) "
                "(one (H, W) per image in pixel_values)"
            )
        grids = []
        max_h, max_w = pixel_values.shape[-2:]
        for index, (height, width) in enumerate(image_sizes.tolist()):
            if height <= 0 or width <= 0 or height % self.crop_size or width % self.crop_size:
                raise DataError(
                    f"image_sizes[{index}] is ({height}, {width}); expected positive multiples of the crop size "
                    f"{self.crop_size}"
                )
            if height > max_h or width > max_w:
                raise DataError(
                    f"image_sizes[{index}] is ({height}, {width}) but pixel_values is only {max_h}x{max_w}"
                )
            grids.append((height // self.crop_size, width // self.crop_size))
        return grids

    def _crops_and_globals(self, pixel_values: torch.Tensor, grids: list[tuple[int, int]]) -> torch.Tensor:
        """Normalised crops of each real canvas (row-major) followed by its bicubic global view, in one batch."""
        size = self.crop_size
        batch = []
        for index, (rows, cols) in enumerate(grids):
            canvas = pixel_values[index, :, : rows * size, : cols * size].to(torch.float32) / 255.0
            canvas = (canvas - self.clip_mean) / self.clip_std
            local = (
                canvas.reshape(3, rows, size, cols, size)
                .permute(1, 3, 0, 2, 4)
                .reshape(rows * cols, 3, size, size)
            )
            global_view = F.interpolate(canvas[None], size=(size, size), mode="bicubic", align_corners=False)
            batch.extend([local, global_view])
        return torch.cat(batch, dim=0)

    def _clip_patch_features(self, crops: torch.Tensor) -> torch.Tensor:
        """CLIP hidden_states[layer_idx] without CLS and without post_layernorm: [n_crops, patches, dim].

        Runs only the encoder layers that feed that hidden state, so the unused last layer costs nothing.
        """
        vision = self.img_processor.vision_model
        hidden = vision.embeddings(crops.to(vision.embeddings.patch_embedding.weight.dtype))
        hidden = vision.pre_layrnorm(hidden)
        for layer in vision.encoder.layers[: self.clip_layers_used]:
            hidden = layer(hidden, None)
        return hidden[:, 1:]

    def _merge_2x2(self, patches: torch.Tensor) -> torch.Tensor:
        """[n, s·s, d] → [n, s/2, s/2, 4d], each cell concatenating (r,c), (r,c+1), (r+1,c), (r+1,c+1)."""
        n, count, dim = patches.shape
        side = int(round(count**0.5))
        half = side // 2
        cells = patches.reshape(n, half, 2, half, 2, dim).permute(0, 1, 3, 2, 4, 5)
        return cells.reshape(n, half, half, 4 * dim)
