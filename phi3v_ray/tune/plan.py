"""What `phi3v-ray tune --dry-run` prints: the searched keys, trial count, per-trial resources and concurrency.

Library code (the command only prints it) so the plan a user reads is built from the same sizing rules the sweep
applies: phi3v_ray.tune.resources for what a trial needs and how many fit, phi3v_ray.tune.sweep for its folders.
"""

from __future__ import annotations

from phi3v_ray.config import ExperimentConfig
from phi3v_ray.tune.space import SearchSpace


def local_capacity_note(config: ExperimentConfig) -> str:
    """How many trials this machine (or the connected cluster) runs at once, or why it cannot run one."""
    from phi3v_ray.errors import ConfigError
    from phi3v_ray.train.launcher import local_capacity
    from phi3v_ray.tune.resources import DATA_RESERVE_CPUS, max_concurrent_trials

    cpus, gpus = local_capacity()
    try:
        concurrency = max_concurrent_trials(
            config, {"CPU": cpus, "GPU": gpus}, reserve_cpus=DATA_RESERVE_CPUS
        )
    except ConfigError as error:
        return f"note: not runnable on this machine as configured: {error}"
    return f"this machine ({cpus:g} CPU, {gpus:g} GPU) runs up to {concurrency} trial(s) at once"


def plan_text(config: ExperimentConfig, space: SearchSpace, capacity_note: str) -> str:
    """Each searched key, the trial count, the scheduler, per-trial resources, concurrency and the W&B group."""
    from phi3v_ray.tune.resources import trial_need
    from phi3v_ray.tune.sweep import sweep_directory, wandb_group

    tune_section = config.tune
    lines = [f"sweep {tune_section.name} -> {sweep_directory(config)}"]
    for dim in space.dimensions:
        lines.append(f"  {dim.key}: {dim.describe()}")
    lines.append(
        f"search {tune_section.search_alg}, {space.grid_size() * tune_section.num_samples} trial(s), "
        f"scheduler {tune_section.scheduler} on {tune_section.metric} ({tune_section.mode})"
    )
    lines.append(trial_need(config).describe())
    lines.append(capacity_note)
    lines.append(f"W&B group: {wandb_group(config)}")
    return "\n".join(lines)
