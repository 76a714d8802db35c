"""Per-trial resources and the concurrency cap: derived from the cluster, refusing what can never run."""

from __future__ import annotations

import pytest

from phi3v_ray.cluster import DRIVER_RESOURCE
from phi3v_ray.config import config_from_dict
from phi3v_ray.errors import ConfigError
from phi3v_ray.tune.resources import concurrent_capacity, driver_resources, max_concurrent_trials, trial_need


def _config(**sections: dict):
    return config_from_dict(sections)


def test_cpu_trial_need_counts_driver_and_every_worker() -> None:
    need = trial_need(
        _config(scaling={"num_workers": 2, "cpus_per_worker": 0.25}, tune={"trial_driver_cpus": 0.5})
    )
    assert (need.cpus, need.gpus) == (1.0, 0.0)
    assert "driver 0.5 CPU + 2 workers × 0.25 CPU" in need.describe()


def test_on_a_cluster_whose_head_offers_the_driver_resource_drivers_reserve_it_and_no_cpu() -> None:
    config = _config(scaling={"num_workers": 2, "cpus_per_worker": 0.25}, tune={"trial_driver_cpus": 0.5})
    assert driver_resources(trial_need(config, {"CPU": 4.0})) == {"cpu": 0.5, "gpu": 0}
    need = trial_need(config, {"CPU": 4.0, DRIVER_RESOURCE: 3.0})
    assert driver_resources(need) == {"cpu": 0, "gpu": 0, DRIVER_RESOURCE: 1}
    assert need.cpus == 0.5 and "driver on the head" in need.describe()
    # 4 CPU fit 8 trials of 2 x 0.25 CPU, but the head has 3 driver slots
    assert max_concurrent_trials(config, {"CPU": 4.0, DRIVER_RESOURCE: 3.0}) == 3
    assert max_concurrent_trials(config, {"CPU": 4.0, DRIVER_RESOURCE: 64.0}) == 8


def test_concurrency_defaults_to_what_the_cpus_fit_after_the_data_reserve() -> None:
    config = _config(scaling={"num_workers": 2, "cpus_per_worker": 0.25})
    assert max_concurrent_trials(config, {"CPU": 4.0}, reserve_cpus=1.0) == 3
    assert max_concurrent_trials(config, {"CPU": 4.0}) == 4


def test_concurrency_on_a_gpu_cluster_is_bounded_by_gpus() -> None:
    config = _config(scaling={"num_workers": 4, "use_gpu": True, "cpus_per_worker": 8, "gpus_per_worker": 1})
    nodes = [{"CPU": 48.0, "GPU": 4.0}] * 3
    assert max_concurrent_trials(config, {"CPU": 144.0, "GPU": 12.0}, nodes, reserve_cpus=1.0) == 3


def test_sweep_that_can_never_be_scheduled_is_refused_with_the_numbers() -> None:
    config = _config(scaling={"num_workers": 4, "use_gpu": True, "gpus_per_worker": 1, "cpus_per_worker": 1})
    with pytest.raises(ConfigError) as caught:
        max_concurrent_trials(config, {"CPU": 16.0, "GPU": 2.0})
    message = str(caught.value)
    assert "never be scheduled" in message and "4 GPU per trial" in message and "2 GPU" in message


def test_worker_bigger_than_any_node_is_refused_even_if_the_cluster_total_fits() -> None:
    config = _config(scaling={"num_workers": 1, "cpus_per_worker": 6})
    with pytest.raises(ConfigError, match="largest node has 4 CPU"):
        concurrent_capacity(trial_need(config), {"CPU": 8.0}, [{"CPU": 4.0}, {"CPU": 4.0}])


def test_requested_concurrency_beyond_capacity_is_refused_but_within_it_is_kept() -> None:
    config = _config(scaling={"num_workers": 2, "cpus_per_worker": 0.25}, tune={"max_concurrent_trials": 5})
    with pytest.raises(ConfigError, match="tune.max_concurrent_trials: 5 .* fits 3"):
        max_concurrent_trials(config, {"CPU": 4.0}, reserve_cpus=1.0)
    config.tune.max_concurrent_trials = 2
    assert max_concurrent_trials(config, {"CPU": 4.0}, reserve_cpus=1.0) == 2


def test_a_cluster_that_may_grow_trusts_the_requested_concurrency() -> None:
    config = _config(scaling={"num_workers": 4, "use_gpu": True}, tune={"max_concurrent_trials": 4})
    assert max_concurrent_trials(config, {"CPU": 8.0}, may_grow=True) == 4


def test_variant_search_carries_the_concurrency_cap_tune_would_otherwise_ignore() -> None:
    """Tune ignores max_concurrent_trials for a generator passed as search_alg; ours must hold the cap itself."""
    from phi3v_ray.config import ExperimentConfig
    from phi3v_ray.tune.sweep import build_search_alg

    for algorithm in ("random", "grid"):
        config = ExperimentConfig.model_validate({"tune": {"search_alg": algorithm}})
        assert build_search_alg(config, 2).max_concurrent == 2
