"""The retry policy of the project's Ray Data actor pools (preprocessing, evaluation), applied in one place.

Spot capacity: a node, and the actors on it, can vanish mid-batch. A lost actor is recreated (on the capacity that
remains or on the autoscaler's replacement node) and the batches it held are retried on it. Both are bounded, so an
actor that keeps dying (killed for memory on every attempt, say) fails the job with Ray's error instead of looping;
Ray Data's own default is unbounded (-1) for both. Only system failures are retried: a row that raises is handled by
the UDF (a reject, or an error), never retried.

Ray 2.60 takes these two settings only through `map_batches(**ray_remote_args)`, which it marks deprecated (to be
removed in Ray 2.64) with a warning on every call; the warning is silenced here, where the reason is written down.
When the lock moves to a Ray without that path, this is the one place to change.
"""

from __future__ import annotations

import warnings
from typing import Any

ACTOR_RETRY_POLICY: dict[str, int] = {"max_restarts": 4, "max_task_retries": 4}


def map_batches_with_retries(dataset: Any, udf: Any, **options: Any) -> Any:
    """`dataset.map_batches(udf, **options)` on an actor pool that follows ACTOR_RETRY_POLICY."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
        return dataset.map_batches(udf, **options, **ACTOR_RETRY_POLICY)
