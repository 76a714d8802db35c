"""Search-space parsing and validation: bad spaces fail before Ray or any trial starts, with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from phi3v_ray import cli
from phi3v_ray.config import ExperimentConfig, config_from_dict
from phi3v_ray.errors import ConfigError
from phi3v_ray.tune.space import parse_search_space
from phi3v_ray.tune.sweep import run_sweep, sweep_directory

GOOD_SPACE = {
    "finetune.rank": {"choice": [8, 16, 32, 64]},
    "optim.lr": {"loguniform": [1e-5, 5e-4]},
    "finetune.alpha": {"ratio_of": "finetune.rank", "value": 2},
}


def _config(space: dict, tmp_path: Path | None = None, **tune: object) -> ExperimentConfig:
    raw: dict = {"tune": {"search_space": space, **tune}}
    if tmp_path is not None:
        raw["run"] = {"storage_path": str(tmp_path / "runs")}
    return config_from_dict(raw)


def test_sampled_values_and_derived_alpha_resolve_into_a_validated_config() -> None:
    space = parse_search_space(_config(GOOD_SPACE))
    resolved = space.resolve(ExperimentConfig(), {"finetune.rank": 32, "optim.lr": 1.5e-4})
    assert (resolved.finetune.rank, resolved.finetune.alpha, resolved.optim.lr) == (32, 64.0, 1.5e-4)
    assert space.keys == ["finetune.rank", "optim.lr", "finetune.alpha"]
    assert set(space.param_space()) == {"finetune.rank", "optim.lr"}  # derived keys are not sampled by Tune


def test_yaml_exponent_numbers_without_a_dot_are_read_as_floats() -> None:
    raw = yaml.safe_load("tune:\n  search_space:\n    optim.lr: {loguniform: [1e-5, 5e-4]}\n")
    assert raw["tune"]["search_space"]["optim.lr"]["loguniform"] == ["1e-5", "5e-4"]  # PyYAML's quirk
    (dim,) = parse_search_space(config_from_dict(raw)).dimensions
    assert dim.values == (1e-5, 5e-4)


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        (
            {"finetune.rnk": {"choice": [8]}},
            "tune.search_space.finetune.rnk: unknown config key: finetune has no 'rnk'",
        ),
        ({"optimizer.lr": {"choice": [1e-4]}}, "tune.search_space.optimizer.lr: unknown config key"),
        ({"optim.lr.x": {"choice": [1e-4]}}, "optim.lr is a value, not a section"),
        ({"finetune": {"choice": [8]}}, "names the whole section 'finetune'"),
        ({"optim.lr": {"loguniform": [5e-4, 1e-5]}}, "optim.lr: loguniform range is empty"),
        ({"optim.lr": {"loguniform": [0.0, 1e-3]}}, "optim.lr: loguniform needs 0 < low < high"),
        (
            {"optim.lr": {"uniform": [-1e-3, 1e-3]}},
            "optim.lr: uniform [-0.001, 0.001]: rejected by the config",
        ),
        (
            {"finetune.rank": {"choice": [0, 8]}},
            "finetune.rank: choice [0, 8]: rejected by the config: finetune.rank",
        ),
        ({"finetune.rank": {"randint": [0, 4]}}, "finetune.rank: randint [0, 4]: rejected by the config"),
        ({"finetune.rank": {"choice": []}}, "finetune.rank: choice needs a non-empty list"),
        ({"finetune.rank": {"choise": [8]}}, "finetune.rank: expected exactly one of"),
        (
            {"finetune.rank": {"choice": [8]}, "finetune.alpha": {"ratio_of": "finetune.rnk", "value": 2}},
            "ratio_of names",
        ),
        (
            {"finetune.rank": {"choice": [8]}, "finetune.alpha": {"ratio_of": "finetune.rank", "value": 0}},
            "positive number",
        ),
        ({"deepspeed.offload_param": {"choice": [True]}}, "offload_param needs zero_stage: 3"),
        ({"scaling.num_workers": {"choice": [1, 2]}}, "scaling cannot be searched"),
        ({"tune.num_samples": {"choice": [1, 2]}}, "tune cannot be searched"),
    ],
)
def test_bad_search_space_fails_with_one_line_naming_the_key(space: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_search_space(_config(space))
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_grid_search_refuses_continuous_ranges_and_optuna_refuses_grids() -> None:
    with pytest.raises(ConfigError, match="search_alg grid needs finite values"):
        parse_search_space(_config({"optim.lr": {"loguniform": [1e-5, 1e-3]}}, search_alg="grid"))
    with pytest.raises(ConfigError, match="optuna cannot enumerate a grid"):
        parse_search_space(_config({"finetune.rank": {"grid": [8, 16]}}, search_alg="optuna"))


def test_grid_search_enumerates_choices_times_num_samples() -> None:
    space = parse_search_space(
        _config(
            {"finetune.rank": {"choice": [8, 16]}, "optim.lr": {"grid": [1e-4, 2e-4, 3e-4]}},
            search_alg="grid",
        )
    )
    assert space.grid_size() == 6


def test_joint_values_the_config_rejects_are_caught_even_when_each_axis_alone_is_valid() -> None:
    space = {"deepspeed.zero_stage": {"choice": [3, 2]}, "deepspeed.offload_param": {"choice": [True, False]}}
    with pytest.raises(ConfigError, match="offload_param needs zero_stage: 3"):
        parse_search_space(_config(space))


def test_sweep_with_unknown_key_fails_before_any_trial_and_leaves_no_sweep_directory(tmp_path: Path) -> None:
    config = _config({"finetune.rnk": {"choice": [8, 16]}}, tmp_path)
    with pytest.raises(ConfigError, match="finetune.rnk"):
        run_sweep(config)
    assert not sweep_directory(config).exists()


def test_tune_command_reports_an_impossible_range_as_one_line_and_exit_status_2(
    tmp_path: Path, capsys
) -> None:
    experiment = tmp_path / "bad.yaml"
    space = {"optim.lr": {"loguniform": [1e-3, 1e-5]}, "finetune.rank": {"choice": [8]}}
    experiment.write_text(
        yaml.safe_dump({"run": {"storage_path": str(tmp_path)}, "tune": {"search_space": space}})
    )
    assert cli.main(["tune", str(experiment)]) == 2
    error = capsys.readouterr().err.strip()
    assert (
        error
        == "error: tune.search_space.optim.lr: loguniform range is empty: low 0.001 must be below high 1e-05"
    )
    assert not (tmp_path / "sweep").exists()


def test_tune_dry_run_prints_the_plan_without_starting_anything(tmp_path: Path, capsys) -> None:
    experiment = tmp_path / "ok.yaml"
    experiment.write_text(
        yaml.safe_dump({"run": {"storage_path": str(tmp_path)}, "tune": {"search_space": GOOD_SPACE}})
    )
    assert cli.main(["tune", str(experiment), "--dry-run", "--set", "scaling.cpus_per_worker=0.25"]) == 0
    out = capsys.readouterr().out
    assert "finetune.alpha: 2 × finetune.rank" in out and "4 trial(s)" in out
    assert not (tmp_path / "sweep").exists()
