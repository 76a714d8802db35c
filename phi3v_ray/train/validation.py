"""Validation during training: the sharded val loss, a few generated answers for W&B, and the load probe.

Every rank scores its shard of the val split and the loss is all-reduced (token-weighted); every rank also runs
generation, because under ZeRO-3 a forward is a collective. The probe (inputs and last logits of one val example)
is saved with the checkpoint so loaders can prove they rebuilt the same model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from phi3v_ray.config import ExperimentConfig
from phi3v_ray.train.batches import iter_example_batches
from phi3v_ray.train.device import synced, to_device
from phi3v_ray.train.saving import PROBE_POSITIONS


@dataclass
class Validation:
    """Token-weighted validation loss over all ranks, plus rank 0's sample predictions for the W&B table."""

    step: int
    loss: float
    predictions: list[dict[str, Any]]
    probe: dict[str, torch.Tensor] | None


@torch.no_grad()
def validate(
    engine: Any,
    processor: Any,
    shard: Any,
    config: ExperimentConfig,
    device: torch.device,
    rank: int,
    world: int,
) -> Validation:
    """Score the val shard, generate a few answers, and keep one example as the checkpoint's load probe."""
    engine.eval()
    loss_sum, token_count = 0.0, 0
    first_examples: list[dict[str, Any]] = []
    grouped = iter_example_batches(shard, batch_size=config.optim.micro_batch, length_grouping=False)
    for examples in synced(grouped, device):
        if len(first_examples) < max(1, config.run.val_generate_samples):
            first_examples.extend(examples[: max(1, config.run.val_generate_samples) - len(first_examples)])
        batch = to_device(processor.collate(examples), device)
        output = engine(**batch)
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        loss_sum += float(output.loss) * tokens
        token_count += tokens
    totals = torch.tensor([loss_sum, token_count], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    predictions = _generate(engine, processor, first_examples, config, device, world)
    probe = _probe(engine, processor, first_examples[:1], device) if first_examples else None
    engine.train()
    loss = float(totals[0] / totals[1]) if totals[1] > 0 else math.nan
    return Validation(
        step=int(engine.global_steps), loss=loss, predictions=predictions if rank == 0 else [], probe=probe
    )


def _generate(
    engine: Any,
    processor: Any,
    examples: list[dict[str, Any]],
    config: ExperimentConfig,
    device: torch.device,
    world: int,
) -> list[dict[str, Any]]:
    """Greedy answers for a few val products. Every rank generates (ZeRO-3 forwards are collective)."""
    count = config.run.val_generate_samples
    if count == 0 or not examples:
        return []
    examples = examples[:count]
    prompts = [_prompt_only(example) for example in examples]
    batch = to_device(processor.collate(prompts, padding_side="left"), device)
    batch.pop("labels", None)
    generated = engine.module.generate(
        **batch,
        max_new_tokens=config.evaluate.max_new_tokens,
        do_sample=False,
        synced_gpus=config.deepspeed.zero_stage == 3 and world > 1,
    )
    new_tokens = generated[:, batch["input_ids"].shape[1] :]
    rows = []
    for example, tokens in zip(examples, new_tokens, strict=True):
        labels = [int(t) for t in example["labels"] if int(t) != -100]
        rows.append(
            {
                "product_code": example.get("product_code", ""),
                "pixel_values": example["pixel_values"],
                "image_size": example["image_size"],
                "generated": processor.decode(tokens.tolist()),
                "expected": processor.decode(labels),
            }
        )
    return rows


def _prompt_only(example: dict[str, Any]) -> dict[str, Any]:
    """The example cut before its answer (labels mark the answer), for generation."""
    ids, labels = example["input_ids"], example["labels"]
    answer_positions = [i for i, label in enumerate(labels) if int(label) != -100]
    end = answer_positions[0] if answer_positions else len(ids)
    return {
        "input_ids": ids[:end],
        "labels": None,
        "pixel_values": example["pixel_values"],
        "image_size": example["image_size"],
    }


def _probe(
    engine: Any, processor: Any, examples: list[dict[str, Any]], device: torch.device
) -> dict[str, torch.Tensor]:
    """Inputs and last-position logits of one val example, saved with checkpoints so loaders can verify them."""
    batch = processor.collate(examples)
    logits = engine(**to_device(batch, device)).logits
    return {
        **{key: value.cpu() for key, value in batch.items() if key != "labels"},
        "logits": logits[:, -PROBE_POSITIONS:].float().cpu(),
    }
