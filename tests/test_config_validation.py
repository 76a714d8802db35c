"""Bad experiment configs fail fast: one ConfigError line naming the dotted key, before Ray starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from phi3v_ray.config import check_fits_cluster, config_from_dict, load_experiment
from phi3v_ray.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "experiments" / "demo.yaml"


def _error_line(raw: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(raw, source="exp.yaml")
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_unknown_key_is_named_with_its_section():
    assert _error_line({"optim": {"learning_rate": 1e-4}}).startswith(
        "exp.yaml: optim.learning_rate: unknown key"
    )


def test_lora_rank_zero_is_rejected():
    assert _error_line({"finetune": {"rank": 0}}).startswith("exp.yaml: finetune.rank:")


def test_negative_learning_rate_is_rejected():
    line = _error_line({"optim": {"lr": -0.001}})
    assert line.startswith("exp.yaml: optim.lr:") and "-0.001" in line


def test_zero_stage_four_is_rejected():
    line = _error_line({"deepspeed": {"zero_stage": 4}})
    assert line.startswith("exp.yaml: deepspeed.zero_stage:") and "4" in line


def test_float16_on_cpu_names_model_dtype():
    assert _error_line({"model": {"dtype": "float16"}}).startswith(
        "exp.yaml: model.dtype: float16 needs a GPU"
    )


def test_more_workers_than_cluster_cpus_names_num_workers():
    config = config_from_dict({"scaling": {"num_workers": 8, "cpus_per_worker": 1}})
    with pytest.raises(
        ConfigError, match=r"^scaling\.num_workers: 8 workers x 1.0 CPU need 8 CPUs but the cluster has 2"
    ):
        check_fits_cluster(config, cpus=2, gpus=0)


def test_more_gpu_workers_than_gpus_names_num_workers():
    config = config_from_dict({"scaling": {"num_workers": 4, "use_gpu": True, "cpus_per_worker": 1}})
    with pytest.raises(ConfigError, match=r"^scaling\.num_workers: .*need 4 GPUs but the cluster has 1"):
        check_fits_cluster(config, cpus=64, gpus=1)


def test_workers_that_fit_pass():
    check_fits_cluster(
        config_from_dict({"scaling": {"num_workers": 2, "cpus_per_worker": 0.5}}), cpus=1, gpus=0
    )


def test_set_override_is_validated_like_the_file():
    with pytest.raises(ConfigError, match=r"demo.yaml: optim.lr:"):
        load_experiment(DEMO, ["optim.lr=-1"])


# The CLI with ray.init booby-trapped: if the command started (or connected to) Ray, the process would exit 3
# instead of 2. This proves "before Ray starts" by behaviour, not by how fast the command returns.
NO_RAY_CLI = """
import sys
import ray

def refuse(*args, **kwargs):
    print("ray was started", file=sys.stderr)
    sys.exit(3)

ray.init = refuse
from phi3v_ray.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_cli_rejects_too_many_workers_in_one_line_without_starting_ray():
    """The train command checks capacity against this machine before ray.init: exit 2, one stderr line, no Ray."""
    env = {**os.environ, "RAY_ADDRESS": ""}
    done = subprocess.run(
        [sys.executable, "-c", NO_RAY_CLI, "train", str(DEMO), "--set", "scaling.num_workers=512"],
        capture_output=True,
        text=True,
        timeout=600,  # a bound on a hang only (imports can take a while on a loaded machine), not a speed check
        cwd=REPO_ROOT,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: scaling.num_workers: 512 workers"), done.stderr
    assert "Ray" not in done.stdout + done.stderr


def test_old_lora_section_name_is_read_as_finetune_with_a_deprecation_message(tmp_path):
    experiment = tmp_path / "old.yaml"
    experiment.write_text(
        "lora: {mode: full, rank: 4}\n"
        "tune:\n  search_space: {lora.rank: {choice: [4, 8]}, lora.alpha: {ratio_of: lora.rank, value: 2}}\n"
    )
    with pytest.warns(FutureWarning, match="'lora' is now called 'finetune'"):
        config = load_experiment(experiment, ["lora.dropout=0.1"])
    assert (config.finetune.mode, config.finetune.rank, config.finetune.dropout) == ("full", 4, 0.1)
    assert set(config.tune.search_space) == {"finetune.rank", "finetune.alpha"}
    assert config.tune.search_space["finetune.alpha"]["ratio_of"] == "finetune.rank"


def test_old_and_new_section_names_together_are_refused():
    line = _error_line({"lora": {"rank": 4}, "finetune": {"rank": 8}})
    assert "both 'lora' and 'finetune'" in line
