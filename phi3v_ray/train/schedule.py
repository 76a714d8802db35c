"""How long a run is and how its learning rate moves: the step plan and the LR schedule.

`planned_steps` is the one rule for "how many optimizer steps will this run take": the training loop runs exactly
that many, the sweep sizes ASHA's max_t with it and `train --dry-run` prints it. The LR schedule is a LambdaLR over
the optimizer DeepSpeed builds, so the engine steps it and saves its state with the engine checkpoint (resume
continues the schedule where it stopped). torch is imported lazily so the dry run can plan without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from phi3v_ray.config import ExperimentConfig, OptimSection

if TYPE_CHECKING:
    import torch


def samples_per_step(config: ExperimentConfig, world_size: int) -> int:
    """Samples per optimizer step across all workers: micro-batch x accumulation x workers."""
    return config.optim.micro_batch * config.optim.grad_accum * world_size


def steps_per_epoch(config: ExperimentConfig, train_rows: int, world_size: int) -> int:
    """Whole optimizer steps in one pass over `train_rows` examples (a partial last step is dropped), at least 1."""
    return max(1, train_rows // samples_per_step(config, world_size))


def planned_steps(
    config: ExperimentConfig, train_rows: int | None, world_size: int | None = None
) -> int | None:
    """Optimizer steps in the run: `run.max_steps`, else epochs x steps per epoch; None when rows are unknown.

    `world_size` defaults to `scaling.num_workers` (what the launcher starts).
    """
    if config.run.max_steps:
        return config.run.max_steps
    if not train_rows:
        return None
    world = config.scaling.num_workers if world_size is None else world_size
    return config.run.epochs * steps_per_epoch(config, train_rows, world)


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Factor applied to the peak lr after `step` optimizer steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def scheduler_factory(
    optim: OptimSection, total_steps: int
) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LambdaLR]:
    """A callable DeepSpeed applies to the optimizer it creates (`deepspeed.initialize(lr_scheduler=...)`)."""
    warmup_steps = int(round(optim.warmup_ratio * total_steps))

    def build(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        import torch

        def factor(step: int) -> float:
            return lr_multiplier(
                step, total_steps=total_steps, warmup_steps=warmup_steps, schedule=optim.schedule
            )

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    return build
