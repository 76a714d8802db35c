"""Where a worker's tensors live, and how the ranks stay in lockstep over their batches.

Shared by the training steps (phi3v_ray.train.loop) and validation (phi3v_ray.train.validation): both must stop on
every rank together, because DeepSpeed steps, ZeRO-3 forwards and Ray reports are collectives.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from phi3v_ray.config import ExperimentConfig


def select_device(config: ExperimentConfig, local_rank: int) -> torch.device:
    """This worker's GPU, or the CPU with as many intra-op threads as the worker reserved."""
    if config.scaling.use_gpu:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    # One intra-op thread per reserved CPU: more threads than reserved cores oversubscribe the node (seen: a 2-core
    # box ran a tiny model's step 35x slower with 2 threads per worker than with 1).
    torch.set_num_threads(max(1, int(config.scaling.cpus_per_worker)))
    return torch.device("cpu")


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of a collated batch on `device`."""
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def synced(batches: Iterable[Any], device: torch.device) -> Iterator[Any]:
    """Yield while every rank still has a batch: DeepSpeed steps and Ray reports must happen on all ranks together.

    Shards hold equal row counts, but length grouping can cut them into different numbers of micro-batches; the
    leftover batches on longer shards are drained (not trained) so Ray Data can start the next epoch on all ranks.
    """
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        flag = torch.tensor([0 if batch is None else 1], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if int(flag.item()) == 0:
            for _ in iterator:
                pass
            return
        yield batch
