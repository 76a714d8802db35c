"""Offline checks of a Ray cluster launcher file (cluster.yaml); whether an experiment fits it: cluster_fit.py.

`ray up` finds most mistakes only after it has talked to the cloud (or after a GPU bill). This module runs the same
validation `ray up` runs before any cloud call (Ray's `prepare_config` + `validate_config`, which merge the provider
defaults and check `ray/autoscaler/ray-schema.json`), adds the checks Ray leaves to the cloud or words vaguely, and
reads each node type's CPU/GPU counts (the input of cluster_fit.py).

Ray's helpers live in the private `ray.autoscaler._private.util`, so this module is pinned to the Ray range in
pyproject.toml; `prepare_config` only reads the provider's bundled `defaults.yaml` (no boto3, no network; the tests
prove it with the network blocked).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from phi3v_ray.errors import ConfigError

# A custom resource only the (on-demand) head advertises in cluster.yaml. With `CPU: 0` on the head, a Tune trial
# driver that reserves CPUs can only land on a spot worker, and Ray Train attaches the trial's TrainController to
# the driver's node: one reclaimed node would take a trial's controller along with its workers. Trial drivers
# reserve one unit of it instead of CPUs (phi3v_ray.tune.resources), so drivers and controllers live on the head.
DRIVER_RESOURCE = "phi3v_driver"


class InstanceShape(NamedTuple):
    """What Ray autodetects on an AWS instance type: vCPUs and GPUs (the GPU model is for the printout)."""

    cpus: int
    gpus: int
    gpu_model: str = ""


# The numbers Ray's AWS provider would read from DescribeInstanceTypes at `ray up`; kept here so checks stay offline.
AWS_INSTANCE_TYPES: dict[str, InstanceShape] = {
    "g5.xlarge": InstanceShape(4, 1, "A10G-24GB"),
    "g5.2xlarge": InstanceShape(8, 1, "A10G-24GB"),
    "g5.4xlarge": InstanceShape(16, 1, "A10G-24GB"),
    "g5.8xlarge": InstanceShape(32, 1, "A10G-24GB"),
    "g5.12xlarge": InstanceShape(48, 4, "A10G-24GB"),
    "g5.16xlarge": InstanceShape(64, 1, "A10G-24GB"),
    "g5.24xlarge": InstanceShape(96, 4, "A10G-24GB"),
    "g5.48xlarge": InstanceShape(192, 8, "A10G-24GB"),
    "p4d.24xlarge": InstanceShape(96, 8, "A100-40GB"),
    "p4de.24xlarge": InstanceShape(96, 8, "A100-80GB"),
    "p5.48xlarge": InstanceShape(192, 8, "H100-80GB"),
    "m5.large": InstanceShape(2, 0),
    "m5.xlarge": InstanceShape(4, 0),
    "m5.2xlarge": InstanceShape(8, 0),
    "m5.4xlarge": InstanceShape(16, 0),
    "m5.8xlarge": InstanceShape(32, 0),
    "m5.12xlarge": InstanceShape(48, 0),
    "m5.16xlarge": InstanceShape(64, 0),
    "m5.24xlarge": InstanceShape(96, 0),
}

# Environment variables that hold credentials; their values must come from the submitting shell, never the file.
SECRET_NAMES = (
    "WANDB_API_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "RAY_AUTH_TOKEN",
)
_SECRET_ASSIGNMENT = re.compile(r"\b(" + "|".join(SECRET_NAMES) + r")\s*[=:]\s*[\"']?([^\s\"'$][^\s\"']*)")
# Values the user is meant to replace before `ray up` (bucket name, account id); reported as warnings.
_PLACEHOLDER = re.compile(r"<[A-Z_]+>|my-phi3v-bucket")


@dataclass(frozen=True)
class NodeType:
    """One entry of `available_node_types` with the CPU/GPU counts Ray will schedule on."""

    name: str
    instance_type: str
    cpus: int
    gpus: int
    min_workers: int
    max_workers: int
    is_head: bool
    spot: bool
    gpu_model: str = ""
    driver_slots: int = (
        0  # units of the head-only trial-driver resource (phi3v_ray.tune.resources.DRIVER_RESOURCE)
    )

    def describe(self) -> str:
        """One printable line: name, instance, resources, scaling range, market."""
        gpu = f" ({self.gpu_model})" if self.gpus and self.gpu_model else ""
        role = "head" if self.is_head else f"workers {self.min_workers}..{self.max_workers}"
        market = "spot" if self.spot else "on-demand"
        return f"{self.name}: {self.instance_type}, {self.cpus} CPU, {self.gpus} GPU{gpu}, {role}, {market}"


def load_cluster_yaml(path: str | Path) -> dict[str, Any]:
    """Read a cluster YAML into a dict, with a one-line error for a missing file or broken YAML."""
    file_path = Path(path)
    if not file_path.is_file():
        raise ConfigError(f"{file_path}: no such cluster file")
    try:
        raw = yaml.safe_load(file_path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{file_path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{file_path}: expected a mapping (cluster_name, provider, ...), got {type(raw).__name__}"
        )
    return raw


def validate_cluster_file(path: str | Path) -> dict[str, Any]:
    """Validate a cluster launcher file as `ray up` would before any cloud call; return the prepared config."""
    return validate_cluster_config(load_cluster_yaml(path), source=str(path))


def validate_cluster_config(raw: dict[str, Any], source: str = "<cluster>") -> dict[str, Any]:
    """Our checks (clear messages), then Ray's `prepare_config` + `validate_config`; returns the prepared dict."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    _check_no_secrets(raw, source)
    _check_node_types(raw, source)
    try:
        prepared = prepare_config(raw)
    except (KeyError, TypeError, AttributeError, AssertionError, NotImplementedError, ValueError) as error:
        raise ConfigError(f"{source}: Ray could not prepare the config: {_error_text(error)}") from None
    try:
        validate_config(prepared)
    except Exception as error:  # jsonschema.ValidationError, ValueError, RuntimeError from Ray's checks
        raise ConfigError(_format_ray_error(error, source)) from None
    node_types(prepared, source)  # every node type must resolve to known CPU/GPU counts
    return prepared


def _error_text(error: BaseException) -> str:
    """A KeyError prints as a quoted key; say which key is missing instead."""
    if isinstance(error, KeyError):
        return f"missing key {error.args[0]!r}"
    return str(error) or type(error).__name__


def _format_ray_error(error: Exception, source: str) -> str:
    """One line from a jsonschema error: dotted key, what Ray's schema said, and the value found."""
    import jsonschema
    import ray

    if isinstance(error, jsonschema.ValidationError):
        key = ".".join(str(part) for part in error.absolute_path) or "<top level>"
        return f"{source}: {key}: {error.message} (Ray {ray.__version__} ray-schema.json)"
    return f"{source}: {error}"


def _check_no_secrets(raw: dict[str, Any], source: str) -> None:
    """Credentials belong in the submitting shell's environment; a file that holds one is refused."""
    provider = raw.get("provider")
    if isinstance(provider, dict) and provider.get("aws_credentials"):
        raise ConfigError(
            f"{source}: provider.aws_credentials: credentials must not be written in the cluster file; "
            "use the AWS CLI profile or AWS_* environment variables of the shell that runs `ray up`"
        )

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                child = f"{path}.{key}" if path else str(key)
                if (
                    str(key) in SECRET_NAMES
                    and isinstance(value, str)
                    and value
                    and not value.startswith("$")
                ):
                    raise ConfigError(
                        f"{source}: {child}: holds a secret value; expected it from the environment"
                    )
                walk(value, child)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")
        elif isinstance(node, str):
            match = _SECRET_ASSIGNMENT.search(node)
            if match:
                raise ConfigError(
                    f"{source}: {path}: sets {match.group(1)} to a literal value; pass it from the environment "
                    f'(e.g. --runtime-env-json with "${match.group(1)}") instead'
                )

    walk(raw, "")


def _check_node_types(raw: dict[str, Any], source: str) -> None:
    """What Ray's schema misses or words vaguely: head type membership, integer resources, min ≤ max workers."""
    node_types_raw = raw.get("available_node_types")
    if node_types_raw is None:
        return  # Ray's defaults supply node types; its own validation covers the rest.
    if not isinstance(node_types_raw, dict) or not node_types_raw:
        raise ConfigError(
            f"{source}: available_node_types: expected a mapping of node type names to their config"
        )
    head = raw.get("head_node_type")
    if head not in node_types_raw:
        raise ConfigError(
            f"{source}: head_node_type: {head!r} is not one of available_node_types ({', '.join(node_types_raw)})"
        )
    for name, spec in node_types_raw.items():
        key = f"available_node_types.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping with node_config and resources")
        resources = spec.get("resources", {})
        if not isinstance(resources, dict):
            raise ConfigError(f"{source}: {key}.resources: expected a mapping like {{CPU: 8, GPU: 1}}")
        for resource, amount in resources.items():
            if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
                raise ConfigError(
                    f"{source}: {key}.resources.{resource}: expected a non-negative whole number "
                    f"(Ray schedules whole {resource} per node), got {amount!r}"
                )
        for bound in ("min_workers", "max_workers"):
            value = spec.get(bound)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(
                    f"{source}: {key}.{bound}: expected a non-negative whole number, got {value!r}"
                )
        low, high = spec.get("min_workers", 0), spec.get("max_workers")
        if high is not None and low > high:
            raise ConfigError(f"{source}: {key}: min_workers ({low}) is greater than max_workers ({high})")


def node_types(cluster_cfg: dict[str, Any], source: str = "<cluster>") -> list[NodeType]:
    """The prepared config's node types with CPU/GPU counts: `resources` wins, else the AWS instance table."""
    head = cluster_cfg["head_node_type"]
    global_max = int(cluster_cfg.get("max_workers", 0))
    result = []
    for name, spec in cluster_cfg["available_node_types"].items():
        node_config = spec.get("node_config", {})
        instance_type = str(node_config.get("InstanceType", "?"))
        shape = AWS_INSTANCE_TYPES.get(instance_type)
        resources = spec.get("resources", {})
        missing = [r for r in ("CPU", "GPU") if r not in resources]
        if shape is None and missing:
            raise ConfigError(
                f"{source}: available_node_types.{name}.resources: instance type {instance_type!r} is not in "
                f"phi3v-ray's table ({', '.join(sorted(AWS_INSTANCE_TYPES))}); give {' and '.join(missing)} "
                "explicitly, e.g. resources: {CPU: 8, GPU: 1}"
            )
        cpus = int(resources.get("CPU", shape.cpus if shape else 0))
        gpus = int(resources.get("GPU", shape.gpus if shape else 0))
        is_head = name == head
        market = node_config.get("InstanceMarketOptions", {}) or {}
        result.append(
            NodeType(
                name=name,
                instance_type=instance_type,
                cpus=cpus,
                gpus=gpus,
                min_workers=0 if is_head else int(spec.get("min_workers", 0)),
                max_workers=0 if is_head else min(int(spec.get("max_workers", global_max)), global_max),
                is_head=is_head,
                spot=str(market.get("MarketType", "")).lower() == "spot",
                gpu_model=shape.gpu_model if shape else "",
                driver_slots=int(resources.get(DRIVER_RESOURCE, 0)),
            )
        )
    return result


def placeholders(raw: dict[str, Any]) -> list[str]:
    """Dotted keys whose values still hold a placeholder the user must edit (bucket name, account id)."""
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")
        elif isinstance(node, str) and _PLACEHOLDER.search(node):
            found.append(path)

    walk(raw, "")
    return found
