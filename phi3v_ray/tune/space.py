"""The sweep's search space: parsed from `tune.search_space`, checked against the config, resolved per trial.

Every key is a dotted ExperimentConfig key (`finetune.rank`, `optim.lr`, `deepspeed.zero_stage`, ...). The space is
validated before Ray starts: an unknown key, a malformed distribution or a range whose values the config rejects
(`optim.lr: {loguniform: [0, 1e-3]}`, `finetune.rank: {choice: [0, 8]}`) raises one ConfigError naming the key, so a
bad sweep never reaches a trial. Values are checked by putting them into the config and running its own pydantic
validation, so the space can never drift from what the config accepts.

YAML forms (one distribution per key):
    finetune.rank:  {choice: [8, 16, 32, 64]}        # random pick (a grid axis under search_alg: grid)
    finetune.rank:  {grid: [8, 16]}                   # every value, each combined with every other grid axis
    optim.lr:   {loguniform: [1.0e-5, 5.0e-4]}    # log-uniform float in [low, high)
    finetune.dropout: {uniform: [0.0, 0.1]}           # uniform float in [low, high)
    optim.grad_accum: {randint: [1, 4]}           # integer in [low, high), high excluded like range()
    finetune.alpha: {ratio_of: finetune.rank, value: 2}   # derived, not sampled: alpha = 2 × the trial's rank
"""

from __future__ import annotations

import copy
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from phi3v_ray.config import ExperimentConfig, config_from_dict
from phi3v_ray.errors import ConfigError

SAMPLED_KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
DERIVED_KIND = "ratio_of"
SEARCH_ALGS = ("random", "grid", "optuna")
# Joint random draws checked on top of each axis' extremes; catches cross-field rules (e.g. offload vs stage).
JOINT_CHECKS = 32
# Keys a sweep must hold fixed, and why (the message the user sees).
UNSEARCHABLE = {
    "tune": "these are the sweep's own settings",
    "scaling": "every trial must reserve the same resources, or the concurrency cap would be wrong",
    "run.name": "the sweep names each trial's run after its trial id",
    "run.storage_path": "all trials of a sweep live under one sweep directory",
    "wandb": "all trials of a sweep log to one W&B project and group",
    "evaluate": "evaluation settings do not change training",
}
_EXPONENT_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


@dataclass(frozen=True)
class Dimension:
    """One searched (or derived) config key: `values` holds the options for choice/grid, (low, high) for ranges."""

    key: str
    kind: str
    values: tuple[Any, ...] = ()
    ratio_of: str | None = None
    ratio: float | None = None

    @property
    def is_derived(self) -> bool:
        """Derived keys are computed from another key per trial, never sampled by the search algorithm."""
        return self.kind == DERIVED_KIND

    def describe(self) -> str:
        """Short human form used in error messages and the sweep banner: `loguniform [1e-05, 0.0005]`."""
        if self.is_derived:
            return f"{self.ratio:g} × {self.ratio_of}"
        return f"{self.kind} {list(self.values)}"

    def extremes(self) -> list[Any]:
        """The values most likely to break the config: every option, or both ends of a range."""
        if self.kind in ("choice", "grid"):
            return list(self.values)
        low, high = self.values
        if self.kind == "randint":
            return [low, high - 1]
        return [low, high]

    def draw(self, rng: random.Random) -> Any:
        """One value drawn like Tune would (used only to validate joint combinations before the sweep)."""
        if self.kind in ("choice", "grid"):
            return rng.choice(self.values)
        low, high = self.values
        if self.kind == "randint":
            return rng.randrange(low, high)
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        return rng.uniform(low, high)


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space; `param_space()` feeds the Tuner, `resolve()` turns a trial's sample into a config."""

    dimensions: tuple[Dimension, ...]
    search_alg: str

    @property
    def sampled(self) -> tuple[Dimension, ...]:
        """The keys the search algorithm samples (what goes into Tune's param_space)."""
        return tuple(d for d in self.dimensions if not d.is_derived)

    @property
    def keys(self) -> list[str]:
        """Every key the sweep sets, sampled first then derived (the results table's hyperparameter columns)."""
        return [d.key for d in self.sampled] + [d.key for d in self.dimensions if d.is_derived]

    def grid_size(self) -> int:
        """How many grid points one sample of the space expands to (Tune repeats the grid num_samples times)."""
        size = 1
        for dim in self.sampled:
            if _is_grid_axis(dim, self.search_alg):
                size *= len(dim.values)
        return size

    def param_space(self) -> dict[str, Any]:
        """Tune domain objects keyed by the dotted config key (flat, so trial names and W&B configs read plainly)."""
        from ray import tune

        space: dict[str, Any] = {}
        for dim in self.sampled:
            if _is_grid_axis(dim, self.search_alg):
                space[dim.key] = tune.grid_search(list(dim.values))
            elif dim.kind == "choice":
                space[dim.key] = tune.choice(list(dim.values))
            elif dim.kind == "uniform":
                space[dim.key] = tune.uniform(*dim.values)
            elif dim.kind == "loguniform":
                space[dim.key] = tune.loguniform(*dim.values)
            elif dim.kind == "randint":
                space[dim.key] = tune.randint(*dim.values)
        return space

    def full_sample(self, sampled: Mapping[str, Any]) -> dict[str, Any]:
        """The sampled values plus every derived key, in `keys` order; unknown or missing keys are errors."""
        missing = [d.key for d in self.sampled if d.key not in sampled]
        if missing:
            raise ConfigError(f"trial config lacks searched key(s) {missing}; got {sorted(sampled)}")
        values = {d.key: _plain(sampled[d.key]) for d in self.sampled}
        for dim in self.dimensions:
            if dim.is_derived:
                values[dim.key] = _derive(dim, values)
        return values

    def resolve(self, base: ExperimentConfig, sampled: Mapping[str, Any]) -> ExperimentConfig:
        """The trial's full config: the base with the sampled and derived values written in, then re-validated."""
        values = self.full_sample(sampled)
        return _apply(base.to_plain(), values, source=f"trial {values}")


def parse_search_space(config: ExperimentConfig) -> SearchSpace:
    """Parse and validate `config.tune.search_space`; raises ConfigError naming the key before any trial starts."""
    raw_space = config.tune.search_space
    search_alg = config.tune.search_alg
    if not raw_space:
        raise ConfigError(
            "tune.search_space: empty; name at least one key, e.g. `finetune.rank: {choice: [8, 16]}`"
        )
    dimensions = [_parse_dimension(key, spec) for key, spec in raw_space.items()]
    by_key = {d.key: d for d in dimensions}
    for dim in dimensions:
        _check_key_exists(dim.key)
        if dim.is_derived:
            target = by_key.get(dim.ratio_of or "")
            if target is None or target.is_derived:
                raise ConfigError(
                    f"tune.search_space.{dim.key}: ratio_of names {dim.ratio_of!r}, which is not a sampled key "
                    f"of the search space (sampled: {[d.key for d in dimensions if not d.is_derived]})"
                )
        _check_alg_supports(dim, search_alg)
    # Sampled first, derived after: derivation reads the sampled values.
    ordered = tuple(d for d in dimensions if not d.is_derived) + tuple(d for d in dimensions if d.is_derived)
    space = SearchSpace(dimensions=ordered, search_alg=search_alg)
    _check_values_accepted(space, config)
    return space


def _parse_dimension(key: str, spec: Any) -> Dimension:
    """One YAML entry → Dimension, with structural checks (exactly one distribution, ranges of two numbers)."""
    where = f"tune.search_space.{key}"
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping like {{choice: [...]}} or {{loguniform: [low, high]}}, got {spec!r}"
        )
    kinds = [k for k in spec if k in (*SAMPLED_KINDS, DERIVED_KIND)]
    unknown = [k for k in spec if k not in (*SAMPLED_KINDS, DERIVED_KIND, "value")]
    if unknown or len(kinds) != 1:
        raise ConfigError(
            f"{where}: expected exactly one of {list(SAMPLED_KINDS) + [DERIVED_KIND]}, got keys {list(spec)}"
        )
    kind = kinds[0]
    if kind == DERIVED_KIND:
        return _parse_ratio(key, spec)
    if "value" in spec:
        raise ConfigError(f"{where}: `value` only goes with ratio_of (got {dict(spec)!r})")
    values = spec[kind]
    if kind in ("choice", "grid"):
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: {kind} needs a non-empty list of values, got {values!r}")
        return Dimension(key=key, kind=kind, values=tuple(_yaml_number(v) for v in values))
    if isinstance(values, list):
        values = [_yaml_number(v) for v in values]
    if not (isinstance(values, list) and len(values) == 2 and all(_is_number(v) for v in values)):
        raise ConfigError(f"{where}: {kind} needs [low, high] (two numbers), got {values!r}")
    low, high = values
    if kind == "randint" and not all(isinstance(v, int) for v in values):
        raise ConfigError(f"{where}: randint needs two integers [low, high), got {values!r}")
    if low >= high:
        raise ConfigError(f"{where}: {kind} range is empty: low {low!r} must be below high {high!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs 0 < low < high, got [{low!r}, {high!r}]")
    return Dimension(key=key, kind=kind, values=(low, high))


def _parse_ratio(key: str, spec: Mapping[str, Any]) -> Dimension:
    """`{ratio_of: finetune.rank, value: 2}` → a derived Dimension (key = value × the other key)."""
    where = f"tune.search_space.{key}"
    target = spec[DERIVED_KIND]
    ratio = _yaml_number(spec.get("value"))
    if not isinstance(target, str) or not _is_number(ratio) or ratio <= 0:
        raise ConfigError(
            f"{where}: ratio_of needs a key and a positive number, e.g. {{ratio_of: finetune.rank, value: 2}}; "
            f"got {dict(spec)!r}"
        )
    return Dimension(key=key, kind=DERIVED_KIND, ratio_of=target, ratio=float(ratio))


def _check_key_exists(key: str) -> None:
    """The dotted key must name a value field of ExperimentConfig (not a section, not the sweep's own settings)."""
    where = f"tune.search_space.{key}"
    parts = key.split(".")
    for prefix, why in UNSEARCHABLE.items():
        if key == prefix or key.startswith(prefix + "."):
            raise ConfigError(f"{where}: {prefix} cannot be searched: {why}")
    model: type[BaseModel] = ExperimentConfig
    for depth, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            prefix = ".".join(parts[:depth]) or "the config"
            raise ConfigError(
                f"{where}: unknown config key: {prefix} has no {part!r} (it has: {', '.join(fields)})"
            )
        annotation = fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        last = depth == len(parts) - 1
        if last and is_section:
            raise ConfigError(
                f"{where}: names the whole section {key!r}; search a value inside it, e.g. {key}.<key>"
            )
        if not last and not is_section:
            raise ConfigError(
                f"{where}: unknown config key: {'.'.join(parts[: depth + 1])} is a value, not a section"
            )
        if not last:
            model = annotation


def _check_alg_supports(dim: Dimension, search_alg: str) -> None:
    """Grid search needs finite axes; Optuna samples and cannot enumerate a grid."""
    where = f"tune.search_space.{dim.key}"
    if search_alg == "grid" and dim.kind in ("uniform", "loguniform", "randint"):
        raise ConfigError(
            f"{where}: search_alg grid needs finite values, but this key uses {dim.kind}; "
            f"use grid/choice or search_alg random/optuna"
        )
    if search_alg == "optuna" and dim.kind == "grid":
        raise ConfigError(
            f"{where}: search_alg optuna cannot enumerate a grid; use choice (or search_alg grid)"
        )


def _check_values_accepted(space: SearchSpace, config: ExperimentConfig) -> None:
    """Put each axis' extremes, then a few joint draws, into the base config and let pydantic judge them."""
    base = config.to_plain()
    defaults = {d.key: d.extremes()[0] for d in space.sampled}
    for dim in space.sampled:
        for value in dim.extremes():
            sample = {**defaults, dim.key: value}
            _apply(base, space.full_sample(sample), source=f"tune.search_space.{dim.key}: {dim.describe()}")
    rng = random.Random(0)
    for _ in range(JOINT_CHECKS):
        sample = {d.key: d.draw(rng) for d in space.sampled}
        _apply(base, space.full_sample(sample), source=f"tune.search_space (combination {sample})")


def _apply(base: dict[str, Any], values: Mapping[str, Any], *, source: str) -> ExperimentConfig:
    """Write dotted values into a copy of the plain config and validate it; errors keep `source` on one line."""
    raw = copy.deepcopy(base)
    for key, value in values.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    try:
        return config_from_dict(raw, source="config")
    except ConfigError as error:
        reasons = "; ".join(line.removeprefix("config: ") for line in str(error).splitlines())
        raise ConfigError(f"{source}: rejected by the config: {reasons}") from None


def _derive(dim: Dimension, values: Mapping[str, Any]) -> float:
    """value × the referenced key's trial value (alpha = ratio × rank)."""
    assert dim.ratio_of is not None and dim.ratio is not None
    return float(dim.ratio * values[dim.ratio_of])


def _plain(value: Any) -> Any:
    """numpy scalars from Tune/Optuna → plain Python, so configs, CSVs and W&B see ints and floats."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def _yaml_number(value: Any) -> Any:
    """PyYAML reads `1e-5` (no dot) as a string; turn such exponent strings back into the float the user meant."""
    if isinstance(value, str) and _EXPONENT_NUMBER.match(value.strip()):
        return float(value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_grid_axis(dim: Dimension, search_alg: str) -> bool:
    """`grid` is always enumerated; `choice` too when the whole sweep is a grid search."""
    return dim.kind == "grid" or (search_alg == "grid" and dim.kind == "choice")
