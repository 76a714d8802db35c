"""cluster.yaml and `phi3v-ray cluster check`: Ray's own validation, our checks, and whether experiments fit.

Everything here is offline and real: Ray's `prepare_config`/`validate_config` and its bundled ray-schema.json run as
`ray up` runs them; no cloud API is called (one test proves it with the network and boto3 blocked).
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from phi3v_ray.cluster import (
    DRIVER_RESOURCE,
    load_cluster_yaml,
    node_types,
    validate_cluster_config,
    validate_cluster_file,
)
from phi3v_ray.cluster_fit import check_experiment_fits, local_locations
from phi3v_ray.commands import cluster_check
from phi3v_ray.config import config_from_dict, load_experiment
from phi3v_ray.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILE = REPO_ROOT / "cluster.yaml"
CLUSTER_EXPERIMENTS = ["burberry_lora_sweep.yaml", "burberry_full_zero3.yaml", "burberry_eval.yaml"]


@pytest.fixture()
def raw_cluster() -> dict[str, Any]:
    """A fresh copy of the project's cluster.yaml as a dict, for planting mistakes."""
    return copy.deepcopy(load_cluster_yaml(CLUSTER_FILE))


@pytest.fixture(scope="module")
def prepared_cluster() -> dict[str, Any]:
    """The project's cluster.yaml after Ray's prepare_config (what `ray up` works with)."""
    return validate_cluster_file(CLUSTER_FILE)


def _experiment(**sections: dict[str, Any]):
    """An ExperimentConfig from section overrides on top of the defaults."""
    return config_from_dict(sections, source="<test>")


# ------------------------------------------------------------------------------------------- Ray's validation


def test_cluster_yaml_passes_rays_own_prepare_and_validate() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(load_cluster_yaml(CLUSTER_FILE))
    validate_config(prepared)  # raises on any schema or node-type problem
    assert prepared["head_node_type"] == "head"
    assert set(prepared["available_node_types"]) == {"head", "gpu_a10g", "gpu_a100"}
    # Our setup commands replaced Ray's defaults (which would install a nightly Ray wheel).
    assert not any("ray-3.0.0.dev0" in command for command in prepared["setup_commands"])


def test_cluster_yaml_node_types_have_the_intended_shapes(prepared_cluster: dict[str, Any]) -> None:
    shapes = {t.name: t for t in node_types(prepared_cluster)}
    assert (shapes["head"].instance_type, shapes["head"].cpus, shapes["head"].gpus) == ("m5.2xlarge", 0, 0)
    assert (shapes["gpu_a10g"].instance_type, shapes["gpu_a10g"].cpus, shapes["gpu_a10g"].gpus) == (
        "g5.12xlarge",
        48,
        4,
    )
    assert (shapes["gpu_a100"].instance_type, shapes["gpu_a100"].gpus) == ("p4d.24xlarge", 8)
    assert shapes["gpu_a10g"].spot and not shapes["head"].spot
    assert shapes["gpu_a10g"].max_workers == 4


def test_cluster_yaml_writes_no_secret_and_installs_pinned_versions() -> None:
    text = CLUSTER_FILE.read_text()
    raw = yaml.safe_load(text)
    commands = " ".join(raw["setup_commands"])
    assert '"torch==2.13.0"' in commands and '"ray[default,train,tune,data]==2.60.0"' in commands
    assert "aws_credentials" not in raw["provider"]
    # The only mention of the W&B key in the file is the shell reference in the submit example comment.
    for line in text.splitlines():
        if "WANDB_API_KEY" in line and not line.lstrip().startswith("#"):
            pytest.fail(f"WANDB_API_KEY outside a comment: {line!r}")


def test_validation_makes_no_cloud_call_with_network_and_boto3_blocked() -> None:
    # A subprocess whose sockets refuse to connect and where boto3/botocore cannot be imported: if prepare_config
    # talked to AWS, validation would fail here. (A guard, not a stand-in: nothing is faked for the code to use.)
    script = textwrap.dedent(
        f"""
        import socket, sys
        sys.modules["boto3"] = None
        sys.modules["botocore"] = None
        def refuse(*args, **kwargs):
            raise OSError("network blocked by test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from phi3v_ray.cluster import validate_cluster_file
        prepared = validate_cluster_file({str(CLUSTER_FILE)!r})
        print("validated", sorted(prepared["available_node_types"]))
        """
    )
    # The timeout only bounds a hang: importing Ray can take a minute on a loaded machine.
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "validated ['gpu_a100', 'gpu_a10g', 'head']" in result.stdout


# --------------------------------------------------------------------------------------------- planted mistakes


def test_unknown_top_level_key_is_rejected_naming_it(raw_cluster: dict[str, Any]) -> None:
    raw_cluster["worker_count"] = 3
    with pytest.raises(ConfigError, match=r"'worker_count' was unexpected.*ray-schema.json"):
        validate_cluster_config(raw_cluster, source="cluster.yaml")


def test_misspelled_node_type_key_is_rejected_with_its_path(raw_cluster: dict[str, Any]) -> None:
    raw_cluster["available_node_types"]["gpu_a10g"]["max_worker"] = 2
    with pytest.raises(ConfigError) as error:
        validate_cluster_config(raw_cluster, source="cluster.yaml")
    assert "available_node_types.gpu_a10g" in str(error.value)
    assert "'max_worker' was unexpected" in str(error.value)


def test_fractional_gpu_count_is_rejected_naming_node_type(raw_cluster: dict[str, Any]) -> None:
    raw_cluster["available_node_types"]["gpu_a10g"]["resources"] = {"GPU": 0.5}
    with pytest.raises(ConfigError) as error:
        validate_cluster_config(raw_cluster, source="cluster.yaml")
    message = str(error.value)
    assert "available_node_types.gpu_a10g.resources.GPU" in message
    assert "got 0.5" in message and "whole number" in message


def test_rays_schema_itself_rejects_fractional_gpu(raw_cluster: dict[str, Any]) -> None:
    # Our check agrees with Ray's: ray up would refuse the same file.
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw_cluster["available_node_types"]["gpu_a10g"]["resources"] = {"GPU": 0.5}
    with pytest.raises(jsonschema.ValidationError, match="0.5 is not of type 'integer'"):
        validate_config(prepare_config(raw_cluster))


def test_negative_cpu_count_is_rejected(raw_cluster: dict[str, Any]) -> None:
    raw_cluster["available_node_types"]["head"]["resources"] = {"CPU": -1}
    with pytest.raises(ConfigError, match=r"available_node_types\.head\.resources\.CPU: .*got -1"):
        validate_cluster_config(raw_cluster, source="cluster.yaml")


def test_head_node_type_missing_from_node_types_is_rejected(raw_cluster: dict[str, Any]) -> None:
    raw_cluster["head_node_type"] = "ray.head.default"
    with pytest.raises(ConfigError) as error:
        validate_cluster_config(raw_cluster, source="cluster.yaml")
    message = str(error.value)
    assert "head_node_type: 'ray.head.default' is not one of available_node_types" in message
    assert "head, gpu_a10g, gpu_a100" in message


def test_min_workers_above_max_workers_is_rejected(raw_cluster: dict[str, Any]) -> None:
    raw_cluster["available_node_types"]["gpu_a100"]["min_workers"] = 3
    with pytest.raises(ConfigError, match=r"gpu_a100: min_workers \(3\) is greater than max_workers \(1\)"):
        validate_cluster_config(raw_cluster, source="cluster.yaml")


def test_missing_provider_is_rejected() -> None:
    with pytest.raises(ConfigError, match="provider"):
        validate_cluster_config({"cluster_name": "x"}, source="cluster.yaml")


def test_literal_wandb_key_in_setup_commands_is_rejected(raw_cluster: dict[str, Any]) -> None:
    raw_cluster["setup_commands"].append("echo 'export WANDB_API_KEY=0123456789abcdef' >> ~/.bashrc")
    with pytest.raises(ConfigError, match=r"setup_commands\[\d+\]: sets WANDB_API_KEY to a literal value"):
        validate_cluster_config(raw_cluster, source="cluster.yaml")


def test_environment_reference_to_a_secret_is_accepted(raw_cluster: dict[str, Any]) -> None:
    raw_cluster["head_setup_commands"].append('echo "WANDB_API_KEY=$WANDB_API_KEY" > /dev/null')
    validate_cluster_config(raw_cluster, source="cluster.yaml")


def test_aws_credentials_in_provider_are_rejected(raw_cluster: dict[str, Any]) -> None:
    raw_cluster["provider"]["aws_credentials"] = {
        "aws_access_key_id": "AKIA0000",
        "aws_secret_access_key": "x",
    }
    with pytest.raises(ConfigError, match="provider.aws_credentials: credentials must not be written"):
        validate_cluster_config(raw_cluster, source="cluster.yaml")


def test_unknown_instance_type_needs_explicit_resources(raw_cluster: dict[str, Any]) -> None:
    raw_cluster["available_node_types"]["gpu_a10g"]["node_config"]["InstanceType"] = "g6.12xlarge"
    with pytest.raises(ConfigError, match=r"gpu_a10g.resources: instance type 'g6.12xlarge' is not in"):
        validate_cluster_config(raw_cluster, source="cluster.yaml")
    raw_cluster["available_node_types"]["gpu_a10g"]["resources"] = {"CPU": 48, "GPU": 4}
    prepared = validate_cluster_config(raw_cluster, source="cluster.yaml")
    shape = next(t for t in node_types(prepared) if t.name == "gpu_a10g")
    assert (shape.cpus, shape.gpus) == (48, 4)


def test_explicit_resources_override_the_instance_table(raw_cluster: dict[str, Any]) -> None:
    raw_cluster["available_node_types"]["gpu_a100"]["resources"] = {"GPU": 4}
    shape = next(t for t in node_types(validate_cluster_config(raw_cluster)) if t.name == "gpu_a100")
    assert (shape.cpus, shape.gpus) == (96, 4)  # CPU from the p4d.24xlarge table, GPU from the file


# ---------------------------------------------------------------------------------------------- experiment fit


@pytest.mark.parametrize("name", CLUSTER_EXPERIMENTS)
def test_cluster_experiment_files_load_and_fit_cluster_yaml(
    name: str, prepared_cluster: dict[str, Any]
) -> None:
    experiment = load_experiment(REPO_ROOT / "experiments" / name)
    assert experiment.model.preset == "official" and experiment.model.dtype == "bfloat16"
    assert experiment.run.storage_path.startswith("s3://")
    fit = check_experiment_fits(prepared_cluster, experiment)
    assert fit.trials_at_once >= 1


def test_lora_sweep_runs_one_trial_per_a10g_node(prepared_cluster: dict[str, Any]) -> None:
    experiment = load_experiment(REPO_ROOT / "experiments" / "burberry_lora_sweep.yaml")
    fit = check_experiment_fits(prepared_cluster, experiment)
    by_type = {cap.node_type: cap for cap in fit.trial_capacity}
    assert (by_type["gpu_a10g"].per_node, by_type["gpu_a10g"].at_once) == (1, 4)
    assert by_type["gpu_a100"].at_once == 2
    assert fit.trials_at_once == 4


def test_concurrency_is_capped_by_max_concurrent_trials(prepared_cluster: dict[str, Any]) -> None:
    experiment = load_experiment(
        REPO_ROOT / "experiments" / "burberry_lora_sweep.yaml", overrides=["tune.max_concurrent_trials=2"]
    )
    assert check_experiment_fits(prepared_cluster, experiment).trials_at_once == 2


def test_trial_may_span_several_nodes_of_one_type(prepared_cluster: dict[str, Any]) -> None:
    # 8 one-GPU workers do not fit one g5.12xlarge (4 GPUs) but do fit two of them.
    experiment = _experiment(scaling={"num_workers": 8, "use_gpu": True, "cpus_per_worker": 12})
    by_type = {
        cap.node_type: cap for cap in check_experiment_fits(prepared_cluster, experiment).trial_capacity
    }
    assert by_type["gpu_a10g"].per_node == 0
    # 4 nodes x 48 CPU hold 8 x 12 CPU twice: the trial drivers sit on the head (phi3v_driver), not on the workers.
    assert by_type["gpu_a10g"].at_once == 2


def test_without_the_head_driver_resource_drivers_take_worker_cpus_and_the_check_warns(
    raw_cluster: dict[str, Any],
) -> None:
    del raw_cluster["available_node_types"]["head"]["resources"][DRIVER_RESOURCE]
    prepared = validate_cluster_config(raw_cluster)
    experiment = _experiment(scaling={"num_workers": 8, "use_gpu": True, "cpus_per_worker": 12})
    fit = check_experiment_fits(prepared, experiment)
    by_type = {cap.node_type: cap for cap in fit.trial_capacity}
    assert by_type["gpu_a10g"].at_once == 1  # 2 x (96 CPU + a 0.5-CPU driver) do not fit in 4 x 48 CPU
    assert any(f"no {DRIVER_RESOURCE} resource" in warning and "spot" in warning for warning in fit.warnings)
    assert "driver 0.5 CPU" in fit.lines()[0]


def test_cluster_yaml_pins_trial_drivers_to_the_on_demand_head(prepared_cluster: dict[str, Any]) -> None:
    head = next(node for node in node_types(prepared_cluster) if node.is_head)
    assert head.driver_slots > 0 and head.cpus == 0 and not head.spot
    assert all(node.driver_slots == 0 for node in node_types(prepared_cluster) if not node.is_head)
    fit = check_experiment_fits(prepared_cluster, _experiment())
    assert fit.trial_bundles[0] == (0.0, 0.0) and "driver on the head" in fit.lines()[0]
    assert not any(DRIVER_RESOURCE in warning for warning in fit.warnings)


def test_worker_bigger_than_every_node_is_rejected_with_numbers(prepared_cluster: dict[str, Any]) -> None:
    experiment = _experiment(scaling={"num_workers": 2, "use_gpu": True, "gpus_per_worker": 9})
    with pytest.raises(ConfigError) as error:
        check_experiment_fits(prepared_cluster, experiment)
    message = str(error.value)
    assert "one trial needs 2 CPU and 18 GPU" in message
    assert "2 workers x (1 CPU, 9 GPU)" in message
    assert "gpu_a100 (p4d.24xlarge: 96 CPU, 8 GPU" in message


def test_trial_larger_than_the_whole_cluster_is_rejected(prepared_cluster: dict[str, Any]) -> None:
    experiment = _experiment(scaling={"num_workers": 20, "use_gpu": True, "cpus_per_worker": 2})
    with pytest.raises(ConfigError, match=r"one trial needs 40 CPU and 20 GPU .* fits no node type"):
        check_experiment_fits(prepared_cluster, experiment)


def test_cpu_zero_head_alone_hosts_no_trial(raw_cluster: dict[str, Any]) -> None:
    for name in ("gpu_a10g", "gpu_a100"):
        del raw_cluster["available_node_types"][name]
    prepared = validate_cluster_config(raw_cluster)
    with pytest.raises(ConfigError, match="fits no node type"):
        check_experiment_fits(prepared, _experiment())


def test_too_many_evaluation_actors_is_rejected(prepared_cluster: dict[str, Any]) -> None:
    experiment = _experiment(evaluate={"num_actors": 20, "gpus_per_actor": 1})
    with pytest.raises(ConfigError, match=r"evaluate.num_actors: 20 actor\(s\) .* at most 16 fit"):
        check_experiment_fits(prepared_cluster, experiment)


# ------------------------------------------------------------------------------------- storage on a multi-node cluster


def test_cluster_experiment_files_keep_every_location_in_the_bucket(prepared_cluster: dict[str, Any]) -> None:
    for name in CLUSTER_EXPERIMENTS:
        experiment = load_experiment(REPO_ROOT / "experiments" / name)
        assert local_locations(prepared_cluster, experiment) == [], name
        assert experiment.data.catalog_dir.startswith("s3://my-phi3v-bucket/")
        assert (experiment.data.prepared_dir or "").startswith("s3://my-phi3v-bucket/")
        assert all(uri.startswith("s3://my-phi3v-bucket/") for uri in experiment.evaluate.checkpoints)
        assert (experiment.evaluate.output_dir or "").startswith("s3://my-phi3v-bucket/")


def test_local_paths_are_flagged_by_key_when_the_cluster_has_workers(
    prepared_cluster: dict[str, Any],
) -> None:
    experiment = _experiment(
        data={"catalog_dir": "s3://b/catalog", "prepared_dir": "/mnt/shared/prepared"},
        run={"storage_path": "runs"},
        evaluate={"checkpoints": ["s3://b/runs/sweep", "file:///data/runs/x"], "output_dir": "gs://b/out"},
    )
    lines = local_locations(prepared_cluster, experiment)
    assert [line.split(":", 1)[0] for line in lines] == [
        "data.prepared_dir",
        "run.storage_path",
        "evaluate.checkpoints[1]",
    ]
    assert (
        "'/mnt/shared/prepared' is a local path, but worker nodes (gpu_a10g, gpu_a100) share no disk"
        in lines[0]
    )


def test_a_head_only_cluster_may_use_local_paths(raw_cluster: dict[str, Any]) -> None:
    for name in ("gpu_a10g", "gpu_a100"):
        del raw_cluster["available_node_types"][name]
    raw_cluster["available_node_types"]["head"]["resources"] = {"CPU": 8, "GPU": 0}
    assert local_locations(validate_cluster_config(raw_cluster), _experiment()) == []


# --------------------------------------------------------------------------------------------------------- CLI


def _cluster_check(argv: list[str]) -> int:
    """Run the command module the way phi3v_ray.cli.main does: parse, run, user errors exit 2."""
    from phi3v_ray.errors import UserError

    parser = argparse.ArgumentParser(prog="phi3v-ray cluster check")
    cluster_check.add_arguments(parser)
    try:
        return cluster_check.run(parser.parse_args(argv))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def test_cli_reports_node_types_and_fits_with_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(CLUSTER_FILE)]
    for name in CLUSTER_EXPERIMENTS:
        argv += ["--experiment", str(REPO_ROOT / "experiments" / name)]
    assert _cluster_check(argv) == 0
    out = capsys.readouterr().out
    assert "gpu_a10g: g5.12xlarge, 48 CPU, 4 GPU (A10G-24GB), workers 0..4, spot" in out
    assert "burberry_lora_sweep.yaml: fits" in out
    assert "sweep: 4 trial(s) at once" in out
    assert "IamInstanceProfile.Arn still holds a placeholder" in out


def test_cli_exits_two_on_invalid_cluster_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = load_cluster_yaml(CLUSTER_FILE)
    broken["head_node_type"] = "nope"
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert _cluster_check([str(path)]) == 2
    assert "head_node_type: 'nope' is not one of available_node_types" in capsys.readouterr().err


def test_cli_exits_two_when_an_experiment_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = tmp_path / "huge.yaml"
    experiment.write_text(yaml.safe_dump({"scaling": {"num_workers": 64, "use_gpu": True}}))
    good = REPO_ROOT / "experiments" / "burberry_lora_sweep.yaml"
    assert (
        _cluster_check([str(CLUSTER_FILE), "--experiment", str(experiment), "--experiment", str(good)]) == 2
    )
    captured = capsys.readouterr()
    assert "huge.yaml: scaling: one trial needs 64 CPU and 64 GPU" in captured.err
    assert "burberry_lora_sweep.yaml: fits" in captured.out  # the other experiment is still reported


def test_cli_exits_two_on_missing_cluster_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cluster_check([str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml: no such cluster file" in capsys.readouterr().err


def test_cli_exits_two_naming_a_local_location_on_a_multi_node_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = yaml.safe_load((REPO_ROOT / "experiments" / "burberry_lora_sweep.yaml").read_text())
    plain["data"]["catalog_dir"] = "data/burberry"
    experiment = tmp_path / "local.yaml"
    experiment.write_text(yaml.safe_dump(plain))
    assert _cluster_check([str(CLUSTER_FILE), "--experiment", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert "local.yaml: data.catalog_dir: 'data/burberry' is a local path, but worker nodes" in err
    assert "use a bucket URI" in err
