"""Support for the training tests (no tests here): a tiny fixed product set as Ray datasets, a demo config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from phi3v_ray.config import ExperimentConfig, load_experiment

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "experiments" / "demo.yaml"

# (title, category, price, colour, shape): the look of each photo carries its category.
PRODUCTS = [
    ("Quilted Nylon Jacket", "QUILTED JACKETS", 1890.0, (200, 30, 30), "rect"),
    ("Check Cotton Scarf", "SCARVES", 450.0, (30, 160, 40), "ellipse"),
    ("Leather Card Case", "WALLETS & CARD CASES", 390.0, (30, 40, 190), "rect"),
    ("Wool Trench Coat", "TRENCH COATS", 2590.0, (210, 180, 40), "ellipse"),
    ("Canvas Tote Bag", "TOTE BAGS", 1150.0, (120, 40, 160), "rect"),
    ("Silk Check Tie", "TIES", 220.0, (20, 170, 170), "ellipse"),
]


def product_image(
    colour: tuple[int, int, int], shape: str, size: tuple[int, int] = (112, 112)
) -> Image.Image:
    """A white photo with one solid shape: enough visual signal for the tiny model to tell products apart."""
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    box = (16, 16, size[0] - 16, size[1] - 16)
    (draw.rectangle if shape == "rect" else draw.ellipse)(box, fill=colour)
    return image


def prepared_rows(count: int, offset: int = 0) -> list[dict[str, Any]]:
    """Prepared examples (the Ray Data row contract) encoded with the real processor and the tiny tokenizer."""
    from phi3v_ray.data.answers import format_answer
    from phi3v_ray.model.configuration import Phi3VConfig
    from phi3v_ray.model.processing import Phi3VProcessor
    from phi3v_ray.model.tokenizer import load_tokenizer

    processor = Phi3VProcessor.from_config(Phi3VConfig.preset("tiny"), load_tokenizer(None))
    rows = []
    for index in range(offset, offset + count):
        title, category, price, colour, shape = PRODUCTS[index % len(PRODUCTS)]
        example = processor.encode_product(
            product_image(colour, shape), format_answer(title, category, price)
        )
        rows.append(
            {
                "input_ids": np.asarray(example["input_ids"], dtype=np.int32),
                "labels": np.asarray(example["labels"], dtype=np.int32),
                "pixel_values": np.asarray(example["pixel_values"], dtype=np.uint8),
                "image_size": np.asarray(example["image_size"], dtype=np.int32),
                "product_code": 40_000_000 + index,
                "title": title,
                "category": category,
                "full_price": price,
            }
        )
    return rows


def tiny_datasets(n_train: int = 8, n_val: int = 4) -> dict[str, Any]:
    """{"train", "val"} Ray datasets over a fixed set (val repeats train products: an overfit check, not a benchmark)."""
    import ray.data

    return {
        "train": ray.data.from_items(prepared_rows(n_train)),
        "val": ray.data.from_items(prepared_rows(n_val)),
    }


def demo_config(tmp_path: Path, *overrides: str) -> ExperimentConfig:
    """experiments/demo.yaml with test storage under tmp_path and no waiting on unschedulable workers."""
    return load_experiment(
        DEMO,
        [
            f"run.storage_path={tmp_path / 'runs'}",
            f"wandb.dir={tmp_path / 'wandb'}",
            "wandb.mode=offline",
            "run.controller_failure_limit=0",
            "scaling.cpus_per_worker=0.5",
            *overrides,
        ],
    )
