"""`phi3v-ray data prepare`: preprocess catalog splits once into the prepared-split parquet cache."""

from __future__ import annotations

import argparse

from phi3v_ray.commands.arguments import add_experiment_arguments, load_experiment_from_args

HELP = "preprocess splits into model-ready parquet (token ids, labels, uint8 canvases) that runs reuse"
DESCRIPTION = """\
Decode, HD-resize and pad every image of a split, build the prompt, token ids and labels, and write the result to
<prepared_dir>/<split>-<key>/ (parquet), where <key> hashes the catalog rows, the image files' sizes and times
(one listing per image folder or bucket prefix), and the processor settings (tokenizer, crop size, crop budget, image
token). The catalog and prepared_dir may be s3:// or gs:// prefixes: Ray Data actors read the images from the
bucket and write the parquet back to it; an entry counts only once its meta.json is written, so an interrupted
prepare is redone on the next run and a finished split is never redone. `train`, `tune` and `evaluate` read
an entry whose key matches instead of preprocessing again, so a sweep's trials share one preprocessing pass.

Rows that cannot be used (missing, truncated or corrupt images, pixel bombs, unusable prices or titles, examples
longer than data.max_example_tokens, 4096 by default: reason `too_long`) go to rejects.parquet in the same folder
with a reason; the summary shows input = prepared + rejected.

The catalog folder, its splits.parquet, the model and the tokenizer are checked before Ray starts.

Train and val are written with answers in the labels; test (and --prompt-only) without the answer in the input,
for evaluation.

examples:
  phi3v-ray data prepare experiments/demo.yaml
  phi3v-ray data prepare --catalog data/sample --splits train,val
  phi3v-ray data prepare --catalog s3://my-bucket/catalog --set data.prepared_dir=s3://my-bucket/prepared
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Experiment file or catalog directory, which splits, and cache control."""
    add_experiment_arguments(
        parser,
        experiment_required=False,
        experiment_help="experiments/<name>.yaml (model and data settings)",
        set_example="model.num_crops=4",
    )
    parser.add_argument(
        "--catalog",
        help="catalog directory or s3:// prefix (overrides data.catalog_dir; enough on its own)",
    )
    parser.add_argument(
        "--splits",
        default="train,val,test",
        help="comma-separated splits to prepare (default train,val,test)",
    )
    parser.add_argument(
        "--prompt-only",
        action="store_true",
        help="also write train/val in prompt-only form (test is always written prompt-only)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="recompute even when a matching entry exists"
    )


def run(args: argparse.Namespace) -> int:
    """Resolve the config, prepare each split (or reuse it), print a reconciled summary per split."""
    import time

    from phi3v_ray.data.datasets import write_prepared_split
    from phi3v_ray.errors import ConfigError
    from phi3v_ray.ray_session import connect

    if not (args.experiment or args.catalog):
        raise ConfigError("data prepare: give an experiment file or --catalog DIR")
    config = load_experiment_from_args(
        args, [f"data.catalog_dir={args.catalog}"] if args.catalog else [], source="--catalog"
    )
    splits = _splits(args.splits)
    _check_inputs(config, "--catalog" if args.catalog else f"{args.experiment}: data.catalog_dir")
    connect(include_dashboard=False, log_to_driver=False)
    failures = 0
    for split in splits:
        for prompt_only in _modes(split, args.prompt_only):
            label = f"{split}{' (prompt only)' if prompt_only else ''}"
            print(f"[prepare] {label}: reading rows and checking the cache ...", flush=True)
            started = time.perf_counter()
            entry, summary, reused = write_prepared_split(
                config, split, prompt_only=prompt_only, overwrite=args.overwrite
            )
            took = time.perf_counter() - started
            verb = "reused" if reused else f"wrote in {took:.1f}s"
            print(f"[prepare] {label}: {verb} {entry.directory}")
            print(f"[prepare] {label}: {summary}")
            if not summary.reconciles:
                failures += 1
            if summary.rejected:
                print(f"[prepare] {label}: reasons per row in {entry.rejects_path}")
    return 1 if failures else 0


def _check_inputs(config, label: str) -> None:  # noqa: ANN001 - ExperimentConfig, imported lazily
    """Everything that can be wrong with the inputs, found before Ray starts (8 s): the catalog folder, its
    splits.parquet (missing, empty, not parquet, a folder), the model, tokenizer and data.max_example_tokens."""
    from phi3v_ray.data.examples import processor_settings
    from phi3v_ray.data.inputs import check_catalog_dir, check_parquet_file
    from phi3v_ray.data.split import SPLITS_FILE

    catalog = config.data.catalog_dir
    directory = check_catalog_dir(catalog, label)
    check_parquet_file(directory.join(SPLITS_FILE), hint=f"run `phi3v-ray data split {catalog}` first")
    processor_settings(config)


def _splits(text: str) -> list[str]:
    """The comma-separated split names, each checked against the catalog's splits."""
    from phi3v_ray.data.split import SPLIT_NAMES
    from phi3v_ray.errors import ConfigError

    splits = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in splits if name not in SPLIT_NAMES]
    if unknown:
        raise ConfigError(
            f"--splits: unknown split(s) {', '.join(unknown)}; expected some of {', '.join(SPLIT_NAMES)}"
        )
    return splits


def _modes(split: str, prompt_only_too: bool) -> list[bool]:
    """Test is for evaluation (prompt only); train/val carry answers, plus prompt-only copies when asked."""
    if split == "test":
        return [True]
    return [False, True] if prompt_only_too else [False]
