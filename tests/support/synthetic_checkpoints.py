"""Small checkpoints with known behaviour, for the evaluation tests and benchmarks/evaluate.py (test scaffolding).

A LoRA adapter trained with a plain torch loop to memorise a handful of visually distinct products must rank
above an untrained adapter; that is the smallest end-to-end proof that the evaluator measures what it claims.
The checkpoints use the real layout (peft `adapter/` in safetensors + a `CheckpointMeta` written by
phi3v_ray.checkpoint), so they exercise the same loading path as checkpoints from `phi3v-ray train`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from phi3v_ray.data.answers import format_answer

LORA_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


@dataclass(frozen=True)
class SyntheticProduct:
    """One product whose photo is a coloured shape; colour and shape alone identify it."""

    product_code: int
    title: str
    category: str
    full_price: float
    colour: tuple[int, int, int]
    shape: str  # "square" | "circle" | "triangle" | "bar"

    def image(self, size: int = 56, width: int | None = None) -> Image.Image:
        """The product photo: the shape in its colour on white (wider than tall when `width` is given)."""
        image = Image.new("RGB", (width or size, size), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        box = (size // 8, size // 8, size - size // 8, size - size // 8)
        if self.shape == "circle":
            draw.ellipse(box, fill=self.colour)
        elif self.shape == "triangle":
            draw.polygon([(size // 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=self.colour)
        elif self.shape == "bar":
            draw.rectangle((box[0], size // 3, box[2], 2 * size // 3), fill=self.colour)
        else:
            draw.rectangle(box, fill=self.colour)
        return image

    def answer(self) -> str:
        """The answer the model should give for this product."""
        return format_answer(self.title, self.category, self.full_price)


PRODUCTS: tuple[SyntheticProduct, ...] = (
    SyntheticProduct(40000001, "Red Check Scarf", "SCARVES", 450.0, (190, 30, 36), "square"),
    SyntheticProduct(40000002, "Navy Trench Coat", "TRENCH COATS", 2390.0, (28, 40, 90), "circle"),
    SyntheticProduct(40000003, "Olive Quilted Jacket", "QUILTED JACKETS", 1290.0, (96, 104, 50), "triangle"),
    SyntheticProduct(40000004, "Honey Tote Bag", "TOTE BAGS", 1850.0, (196, 150, 80), "bar"),
)


def prepared_rows(
    processor: Any,
    products: tuple[SyntheticProduct, ...] = PRODUCTS,
    *,
    with_answer: bool,
    widths: list[int] | None = None,
) -> list[dict]:
    """Prepared examples (the DESIGN.md row contract) for the products, prompt-only unless with_answer.

    `widths` gives each photo its own width, so prompts differ in length (exercises left padding).
    """
    rows = []
    for index, product in enumerate(products):
        image = product.image(width=widths[index] if widths else None)
        encoded = processor.encode_product(image, product.answer() if with_answer else None)
        rows.append(
            {
                **encoded,
                "product_code": product.product_code,
                "title": product.title,
                "category": product.category,
                "full_price": product.full_price,
            }
        )
    return rows


def make_lora_checkpoint(
    directory: str | Path,
    *,
    steps: int,
    products: tuple[SyntheticProduct, ...] = PRODUCTS,
    rank: int = 8,
    lr: float = 5e-3,
    seed: int = 0,
) -> Path:
    """Train a LoRA adapter on the tiny base for `steps` full-batch steps (0 = untrained) and save a checkpoint.

    What trains is chosen by the training path's own `apply_training_mode` (LoRA + the projector layers), so the
    evaluation tests load adapters shaped exactly like the ones Ray Train writes.
    """
    import torch

    from phi3v_ray.checkpoint import ADAPTER_DIR, CheckpointMeta, write_meta
    from phi3v_ray.config import FinetuneSection, ModelSection
    from phi3v_ray.model.loading import load_model
    from phi3v_ray.model.processing import Phi3VProcessor
    from phi3v_ray.train.trainable import apply_training_mode

    torch.manual_seed(seed)
    model, tokenizer = load_model("tiny")
    processor = Phi3VProcessor.from_config(model.config, tokenizer)
    lora = FinetuneSection(rank=rank, alpha=2 * rank, dropout=0.0, target_modules=LORA_TARGETS)
    peft_model = apply_training_mode(model, lora)
    if steps:
        batch = processor.collate(prepared_rows(processor, products, with_answer=True), padding_side="right")
        optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
        peft_model.train()
        for _ in range(steps):
            loss = peft_model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out / ADAPTER_DIR), safe_serialization=True)
    write_meta(
        out, CheckpointMeta(mode="lora", base_model=ModelSection(preset="tiny", num_crops=4), step=steps)
    )
    return out
