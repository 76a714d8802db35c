"""`phi3v-ray cluster check`: validate a cluster launcher file offline and check that experiments fit its nodes."""

from __future__ import annotations

import argparse
import sys

HELP = "validate cluster.yaml as `ray up` would, and check that experiments fit its node types"
DESCRIPTION = """\
Validates a Ray cluster launcher file with Ray's own checks (the ones `ray up` runs before any cloud call: provider
defaults merged, ray-schema.json) plus phi3v-ray's (head node type exists, resources are whole numbers,
min_workers <= max_workers, no secrets in the file). Prints every node type with its CPUs and GPUs.

With --experiment (repeatable), also checks that one trial (trial driver + scaling.num_workers workers) and the
evaluation actors fit the node types at their max_workers, and prints how many trials can run at once. When the
cluster has worker nodes, every location of the experiment (data.catalog_dir, data.prepared_dir, run.storage_path,
evaluate.output_dir, evaluate.checkpoints) must be a bucket URI (s3://, gs://): nodes share no disk.
Makes no cloud calls and needs no credentials. Exit status 0 when everything fits, 2 when something does not.

example:
  phi3v-ray cluster check cluster.yaml --experiment experiments/burberry_lora_sweep.yaml
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI flags: the cluster file and any number of experiment files."""
    parser.add_argument("cluster_file", help="Ray cluster launcher YAML, e.g. cluster.yaml")
    parser.add_argument(
        "--experiment",
        action="append",
        default=[],
        metavar="YAML",
        help="experiment file whose per-trial resources must fit (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    """Print what was checked; problems go to stderr as one line each and make the exit status 2."""
    import logging

    from phi3v_ray.commands.arguments import check_experiment_file, check_input_file

    check_input_file(args.cluster_file, "cluster", "a Ray cluster launcher YAML, e.g. cluster.yaml")
    for experiment_path in args.experiment:
        check_experiment_file(experiment_path)  # before Ray is imported: a typo fails at once

    import ray

    from phi3v_ray.cluster import load_cluster_yaml, node_types, placeholders, validate_cluster_config
    from phi3v_ray.cluster_fit import check_experiment_fits, local_locations
    from phi3v_ray.config import load_experiment
    from phi3v_ray.errors import ConfigError

    # Ray's prepare_config logs routine defaults ("setting max workers for head node type to 0") at INFO.
    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)

    raw = load_cluster_yaml(args.cluster_file)
    prepared = validate_cluster_config(raw, source=args.cluster_file)
    print(
        f"{args.cluster_file}: valid for Ray {ray.__version__} (prepare_config + validate_config, no cloud calls)"
    )
    print(f"node types (global max_workers {prepared['max_workers']}):")
    for node in node_types(prepared, args.cluster_file):
        print(f"  {node.describe()}")
    for key in placeholders(raw):
        print(f"warning: {args.cluster_file}: {key} still holds a placeholder; edit it before `ray up`")

    failures = 0
    for experiment_path in args.experiment:
        try:
            experiment = load_experiment(experiment_path)
            fit = check_experiment_fits(prepared, experiment)
        except ConfigError as error:
            print(f"error: {experiment_path}: {error}", file=sys.stderr)
            failures += 1
            continue
        local = local_locations(prepared, experiment)
        for line in local:
            print(f"error: {experiment_path}: {line}", file=sys.stderr)
        if local:
            failures += 1
            continue
        print(f"{experiment_path}: fits")
        for line in fit.lines():
            print(f"  {line}")
        for key in placeholders(experiment.to_plain()):
            print(f"  warning: {key} still holds a placeholder (my-phi3v-bucket); set your bucket")
    return 2 if failures else 0
