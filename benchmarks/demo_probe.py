"""One demo trial in a single process, in about a minute: where the tiny model's price error comes from.

A sweep in Ray takes minutes and its figures move with the trial draw; this trains one LoRA adapter on a demo
catalog with plain PyTorch (same model, processor, answer format, LoRA settings and LR schedule as a trial) and
prints, on held-out products, side by side with the trivial predictor:
  - category accuracy, title token F1 and price median APE from generated answers (what the demo reports);
  - price median APE when the true title and category are given (how well the price is mapped from the words);
  - the share of products whose category and material the answer got right (what the price follows).
Batches are drawn at random (`--order random`) or replayed in catalog order (`--order fixed`, the training loop's
order before it shuffled), so the effect of the data order can be seen in one run each.

    python benchmarks/demo_probe.py --base demo-output/base [--rows 1800] [--steps 600] [--order random]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from phi3v_ray.config import config_from_dict
from phi3v_ray.data.answers import parse_answer
from phi3v_ray.data.examples import prepare_row
from phi3v_ray.data.split import load_split_rows, split_catalog_counted
from phi3v_ray.data.synth import synth_catalog
from phi3v_ray.data.vocabulary import MATERIALS
from phi3v_ray.evaluation.metrics import score_rows
from phi3v_ray.evaluation.predictor import first_stop
from phi3v_ray.evaluation.trivial import TrivialPredictor
from phi3v_ray.model.loading import load_model
from phi3v_ray.model.processing import Phi3VProcessor
from phi3v_ray.train.schedule import lr_multiplier
from phi3v_ray.train.trainable import apply_training_mode


def encoded(
    catalog: Path, split: str, processor: Phi3VProcessor, *, prompts: bool, cap: int | None
) -> list[dict]:
    """A split's prepared examples (with answers for training, prompts only for scoring)."""
    rows = load_split_rows(catalog, split, cap).to_dict("records")
    return [
        ex for ex, _ in (prepare_row(row, processor, prompt_only=prompts) for row in rows) if ex is not None
    ]


def generate(model, processor: Phi3VProcessor, examples: list[dict], max_new_tokens: int = 40) -> list[str]:
    """Greedy answers, as the evaluation job generates them."""
    texts: list[str] = []
    stops = set(processor.stop_token_ids)
    with torch.no_grad():
        for start in range(0, len(examples), 32):
            batch = processor.collate(examples[start : start + 32], padding_side="left")
            batch.pop("labels", None)
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                eos_token_id=processor.stop_token_ids,
                pad_token_id=processor.pad_token_id,
            )
            texts += [
                processor.decode(first_stop(row, stops))
                for row in out[:, batch["input_ids"].shape[1] :].tolist()
            ]
    return texts


def with_truth(processor: Phi3VProcessor, example: dict) -> dict:
    """The prompt followed by the true title and category, up to the price."""
    prefix = f"Product: {example['title']}, Category: {example['category']}, Full Price:"
    ids = np.asarray(processor.tokenizer(prefix, add_special_tokens=False)["input_ids"], dtype=np.int32)
    joined = np.concatenate([example["input_ids"], ids])
    return {**example, "input_ids": joined, "labels": np.full(len(joined), -100, dtype=np.int32)}


def material_of(title: object) -> str | None:
    words = str(title).split()
    return next((word for word in MATERIALS if word in words), None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="a warm-started tiny base (the demo's <out>/base)")
    parser.add_argument("--rows", type=int, default=1800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--order", choices=("random", "fixed"), default="random")
    parser.add_argument("--eval", type=int, default=200, help="products scored per split")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    catalog = Path(tempfile.mkdtemp(prefix="demo-probe-")) / "catalog"
    synth_catalog(catalog, args.rows, seed=args.seed)
    split_catalog_counted(catalog, by="title", ratios=(0.8, 0.1, 0.1))
    model, tokenizer = load_model(args.base)
    processor = Phi3VProcessor.from_config(model.config, tokenizer)
    train = encoded(catalog, "train", processor, prompts=False, cap=None)
    test = encoded(catalog, "test", processor, prompts=True, cap=args.eval)
    finetune = config_from_dict(
        {
            "finetune": {
                "mode": "lora",
                "rank": args.rank,
                "alpha": 2.0 * args.rank,
                "dropout": 0.0,
                "vision": "frozen",
                "projector_trainable": True,
                "target_modules": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
            }
        }
    )
    model.config.use_cache = False
    model = apply_training_mode(model, finetune.finetune)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warmup = int(0.1 * args.steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, total_steps=args.steps, warmup_steps=warmup, schedule="cosine")
    )
    sampler = random.Random(args.seed)
    per_epoch = len(train) // args.batch
    started = time.perf_counter()
    model.train()
    for step in range(args.steps):
        if args.order == "random":
            chosen = sampler.sample(train, args.batch)
        else:
            offset = (step % per_epoch) * args.batch
            chosen = train[offset : offset + args.batch]
        loss = model(**processor.collate(chosen)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    trained_s = time.perf_counter() - started
    model.eval()
    answers = [parse_answer(text) for text in generate(model, processor, test)]
    rows = pd.DataFrame(
        {
            "title": [e["title"] for e in test],
            "category": [e["category"] for e in test],
            "full_price": [e["full_price"] for e in test],
            "pred_title": [a.title for a in answers],
            "pred_category": [a.category for a in answers],
            "pred_full_price": [a.full_price for a in answers],
            "parse_error": [a.error for a in answers],
        }
    )
    baseline = TrivialPredictor.fit(
        [e["title"] for e in train], [e["category"] for e in train], [e["full_price"] for e in train]
    )
    trivial = rows.assign(
        pred_title=baseline.title,
        pred_category=baseline.category,
        pred_full_price=baseline.full_price,
        parse_error=None,
    )
    mine, theirs = score_rows(rows), score_rows(trivial)
    given = [
        parse_answer(f"Full Price: {t}").full_price
        for t in generate(model, processor, [with_truth(processor, e) for e in test], max_new_tokens=10)
    ]
    truth = rows["full_price"].to_numpy(dtype=float)
    forced = float(np.nanmedian(np.abs(np.asarray(given, dtype=float) - truth) / truth))
    category_ok = (rows["pred_category"] == rows["category"]).mean()
    material_ok = np.mean(
        [material_of(a) == material_of(b) for a, b in zip(rows["pred_title"], rows["title"], strict=True)]
    )
    print(f"{args.steps} steps ({args.order} order) in {trained_s:.0f} s; {len(test)} held-out test products")
    print(f"{'':28}{'probe':>8}{'trivial':>9}")
    for key in ("category_accuracy", "title_token_f1", "price_median_ape"):
        print(f"{key:28}{mine[key]:8.3f}{theirs[key]:9.3f}")
    print(f"{'price APE, true title given':28}{forced:8.3f}{theirs['price_median_ape']:9.3f}")
    print(f"answers with the right category {category_ok:.2f}, the right material {material_ok:.2f}")


if __name__ == "__main__":
    main()
