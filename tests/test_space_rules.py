"""What each distribution in a search space draws, and which ranges it refuses."""

from __future__ import annotations

import math
import random

import pytest

from phi3v_ray.config import config_from_dict
from phi3v_ray.errors import ConfigError
from phi3v_ray.tune.space import Dimension, parse_search_space


def _space(space: dict, **tune: object):
    return parse_search_space(config_from_dict({"tune": {"search_space": space, **tune}}))


def _dimension(space, key: str) -> Dimension:
    return next(d for d in space.dimensions if d.key == key)


def test_loguniform_draws_are_spread_evenly_over_orders_of_magnitude() -> None:
    dim = _dimension(_space({"optim.lr": {"loguniform": [1e-6, 1e-2]}}), "optim.lr")
    rng = random.Random(0)
    draws = [dim.draw(rng) for _ in range(2000)]
    assert all(1e-6 <= value < 1e-2 for value in draws)
    below_1e4 = sum(value < 1e-4 for value in draws) / len(draws)  # half the decades: about half the draws
    assert 0.4 < below_1e4 < 0.6


def test_uniform_draws_are_spread_evenly_over_the_range() -> None:
    dim = _dimension(_space({"finetune.dropout": {"uniform": [0.0, 0.2]}}), "finetune.dropout")
    rng = random.Random(0)
    draws = [dim.draw(rng) for _ in range(2000)]
    assert all(0.0 <= value < 0.2 for value in draws)
    assert 0.4 < sum(value < 0.1 for value in draws) / len(draws) < 0.6


def test_tune_receives_a_log_uniform_domain_for_loguniform_keys() -> None:
    space = _space({"optim.lr": {"loguniform": [1e-6, 1e-2]}, "finetune.dropout": {"uniform": [0.0, 0.2]}})
    params = space.param_space()
    log_draws = params["optim.lr"].sample(size=2000, random_state=0)
    assert 0.4 < sum(value < 1e-4 for value in log_draws) / 2000 < 0.6
    lin_draws = params["finetune.dropout"].sample(size=2000, random_state=0)
    assert 0.4 < sum(value < 0.1 for value in lin_draws) / 2000 < 0.6
    assert (params["optim.lr"].lower, params["optim.lr"].upper) == (1e-6, 1e-2)


def test_randint_and_choice_draw_only_allowed_values() -> None:
    space = _space({"finetune.rank": {"randint": [4, 7]}})
    rank = _dimension(space, "finetune.rank")
    rng = random.Random(0)
    assert {rank.draw(rng) for _ in range(200)} == {4, 5, 6}
    assert rank.extremes() == [4, 6]
    params = space.param_space()
    assert set(params["finetune.rank"].sample(size=200, random_state=0)) == {4, 5, 6}


def test_grid_axes_multiply_into_the_grid_size() -> None:
    space = _space({"finetune.rank": {"grid": [8, 16, 32]}, "optim.lr": {"grid": [1e-4, 2e-4]}})
    assert space.grid_size() == 6
    assert space.param_space()["finetune.rank"] == {"grid_search": [8, 16, 32]}
    choice_grid = _space({"finetune.rank": {"choice": [8, 16]}}, search_alg="grid")
    assert choice_grid.grid_size() == 2
    random_choice = _space({"finetune.rank": {"choice": [8, 16]}})
    assert random_choice.grid_size() == 1


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"loguniform": [0, 1e-3]}, "loguniform needs 0 < low < high"),
        ({"loguniform": [-1e-3, 1e-3]}, "loguniform needs 0 < low < high"),
        ({"uniform": [1e-3, 1e-3]}, "range is empty"),
        ({"uniform": [2e-3, 1e-3]}, "range is empty"),
    ],
)
def test_empty_or_non_positive_ranges_are_refused(spec, problem) -> None:
    with pytest.raises(ConfigError, match=problem):
        _space({"optim.lr": spec})


def test_a_range_starting_just_above_zero_is_a_valid_loguniform() -> None:
    dim = _dimension(_space({"optim.lr": {"loguniform": [1e-9, 1e-8]}}), "optim.lr")
    assert dim.extremes() == [1e-9, 1e-8]
    assert dim.describe() == "loguniform [1e-09, 1e-08]"


def test_derived_keys_scale_the_sampled_value() -> None:
    space = _space(
        {"finetune.rank": {"choice": [8]}, "finetune.alpha": {"ratio_of": "finetune.rank", "value": 2.5}}
    )
    assert space.full_sample({"finetune.rank": 8}) == {"finetune.rank": 8, "finetune.alpha": 20.0}
    assert _dimension(space, "finetune.alpha").describe() == "2.5 × finetune.rank"
    assert math.isclose(space.resolve(space_base(), {"finetune.rank": 8}).finetune.alpha, 20.0)


def space_base():
    from phi3v_ray.config import ExperimentConfig

    return ExperimentConfig()


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"choice": [8], "uniform": [0.0, 1.0]}, "expected exactly one of"),
        ({"uniform": [0.1]}, "needs \\[low, high\\]"),
        ({"uniform": [0.1, "x"]}, "needs \\[low, high\\]"),
        ({"uniform": [True, 2]}, "needs \\[low, high\\]"),
        ({"randint": [1, 2.5]}, "randint needs two integers"),
    ],
)
def test_malformed_distributions_are_refused_naming_the_rule(spec, problem) -> None:
    with pytest.raises(ConfigError, match=problem):
        _space({"finetune.dropout": spec})


def test_a_ratio_below_one_is_a_valid_derived_key() -> None:
    space = _space(
        {"finetune.rank": {"choice": [8]}, "finetune.alpha": {"ratio_of": "finetune.rank", "value": 0.5}}
    )
    assert space.full_sample({"finetune.rank": 8})["finetune.alpha"] == 4.0
    with pytest.raises(ConfigError, match="positive number"):
        _space(
            {"finetune.rank": {"choice": [8]}, "finetune.alpha": {"ratio_of": "finetune.rank", "value": 0}}
        )
