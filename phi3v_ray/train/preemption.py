"""A spot node's preemption notice becomes a checkpoint at once, and no step is trained that would be redone.

Ray (2.60+) turns the notice into a drain of the node with reason PREEMPTION and a deadline: SIGTERM to the node's
`ray start` drains it for `RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S` (30 s by default; set it to ~110 s on spot nodes,
inside AWS's two-minute warning), and the autoscaler drains a node it is about to lose the same way. Ray Train's
preemption watcher sees the drain (every `RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S`, 5 s by default) and tells every
worker of the group; `ray.train.get_preemption_info()` hands that to the loop, as one value agreed by all ranks.

What the loop does with it: save and report a checkpoint at the step it is on (whatever the cadence), then train no
further. Steps taken after that checkpoint would be lost with the node and trained again after the restart, so the
workers wait instead, until Ray Train tears the group down at the deadline and restarts it elsewhere from exactly
this checkpoint (restarts for preemption count against `FailureConfig.max_preemption_failures`, not `max_failures`).
The wait is bounded: a group still alive well past the deadline fails with a message naming what it waited for.
"""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

# Past the notice's deadline, how long a worker keeps waiting for Ray Train to tear its group down before giving up.
TEARDOWN_GRACE_S = 120.0
# A notice without a deadline (none reported): how long to wait for the node to go.
NO_DEADLINE_WAIT_S = 300.0


class PreemptionWaitExpired(RuntimeError):
    """The node was announced as preempted, the checkpoint was saved, and the group was never torn down."""


def preemption_notice() -> Any | None:
    """The preemption notice for this worker group (`ray.train.PreemptionInfo`), or None when there is none.

    A collective: every rank must call it at the same step. An installed Ray without the API gives None (the run
    still survives a node loss through its cadence checkpoints).
    """
    import ray.train

    get_info = getattr(ray.train, "get_preemption_info", None)
    return get_info() if get_info is not None else None


def describe(notice: Any) -> str:
    """One line for logs: which nodes and ranks go, and when."""
    deadline_ms = getattr(notice, "deadline_ms", None)
    when = (
        f"in {max(0.0, deadline_ms / 1000 - time.time()):.0f} s" if deadline_ms else "with no deadline given"
    )
    nodes = ", ".join(node[:12] for node in getattr(notice, "preempted_node_ids", [])) or "?"
    return f"node(s) {nodes} (ranks {getattr(notice, 'preempted_ranks', [])}) will be preempted {when}"


def wait_for_teardown(notice: Any, step: int, *, grace_s: float = TEARDOWN_GRACE_S) -> None:
    """Train no further: sleep until Ray Train ends this worker group; raise if that never happens.

    Returning would mean training on steps that the restart trains again; raising early would count as a failure.
    """
    deadline_ms = getattr(notice, "deadline_ms", None)
    limit = (deadline_ms / 1000 if deadline_ms else time.time() + NO_DEADLINE_WAIT_S) + grace_s
    logger.warning(
        "step %d saved for preemption: %s; waiting to be restarted elsewhere", step, describe(notice)
    )
    while time.time() < limit:
        time.sleep(0.5)
    raise PreemptionWaitExpired(
        f"step {step}: saved a checkpoint on a preemption notice ({describe(notice)}), then waited "
        f"{grace_s:.0f} s past its deadline for Ray Train to restart the worker group, which never happened"
    )
