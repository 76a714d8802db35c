"""The learning rate an undisturbed run logs after each step, for tests that compare a resumed run against it."""

from __future__ import annotations

from phi3v_ray.config import OptimSection


def undisturbed_lrs(optim: OptimSection, total_steps: int) -> dict[int, float]:
    """step -> learning rate after that step, from the project's own schedule stepped alone (no training)."""
    import torch

    from phi3v_ray.train.schedule import scheduler_factory

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=optim.lr)
    schedule = scheduler_factory(optim, total_steps)(optimizer)
    lrs = {}
    for step in range(1, total_steps + 1):
        optimizer.step()
        schedule.step()
        lrs[step] = float(schedule.get_last_lr()[0])
    return lrs
