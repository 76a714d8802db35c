"""Learning-rate schedule: linear warmup, then cosine, linear or constant.

A LambdaLR over the optimizer DeepSpeed builds, so the engine steps it and saves its state with the engine
checkpoint (resume continues the schedule where it stopped).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from phi3v_ray.config import OptimSection


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
        def factor(step: int) -> float:
            return lr_multiplier(
                step, total_steps=total_steps, warmup_steps=warmup_steps, schedule=optim.schedule
            )

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    return build
