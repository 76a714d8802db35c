"""Fault injection for tests: make rank 0 raise at a chosen step, outside the experiment config.

Retry-from-checkpoint and "a trial that fails leaves a complete W&B run" can only be tested by failing on purpose.
The failure is not an experiment setting (a production config must not be able to carry it): a test hands a
`PlantedFailure` to `build_trainer` / `run_sweep`, which pass it to the workers in `train_loop_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from phi3v_ray.config import ExperimentConfig


class PlantedFailureError(RuntimeError):
    """The failure a PlantedFailure raises (never raised unless a test planted one)."""


@dataclass(frozen=True)
class PlantedFailure:
    """Raise on rank 0 after optimizer step `step`, in an attempt that did not start from a checkpoint.

    `when` narrows it to runs whose config holds these values (dotted keys, e.g. `{"finetune.rank": 4}`), so a sweep
    can fail one trial and not the others.
    """

    step: int
    when: Mapping[str, Any] = field(default_factory=dict)

    def to_plain(self) -> dict[str, Any]:
        """A dict that travels in `train_loop_config`."""
        return {"step": self.step, "when": dict(self.when)}

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any] | None) -> PlantedFailure | None:
        """The failure planted in a loop config, or None."""
        return None if plain is None else cls(step=int(plain["step"]), when=dict(plain.get("when") or {}))

    def applies_to(self, config: ExperimentConfig) -> bool:
        """True when every `when` key has the given value in `config`."""
        plain = config.to_plain()
        for key, expected in self.when.items():
            node: Any = plain
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node != expected:
                return False
        return True

    def maybe_raise(self, config: ExperimentConfig, *, step: int, resumed: bool, rank: int) -> None:
        """Raise PlantedFailureError when this is the planted step of a fresh attempt on rank 0."""
        if step == self.step and not resumed and rank == 0 and self.applies_to(config):
            raise PlantedFailureError(f"planted failure at step {step} (test-only fault injection)")
