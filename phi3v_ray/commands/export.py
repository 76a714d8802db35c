"""`phi3v-ray export`: the winner as a merged model in the official layout (or its adapter), with a model card."""

from __future__ import annotations

import argparse

HELP = "merge a checkpoint into a servable model (official Phi-3-Vision layout) or package its adapter"
DESCRIPTION = """\
Merges a checkpoint's LoRA (language, vision tower, projector) into its base in float32, casts to --dtype and writes
the official Phi-3-Vision layout (config.json, sharded safetensors + index, tokenizer, preprocessor and generation
configs) with a model card (README.md). vLLM and `phi3v-ray predict/evaluate` load the result as it is.

  phi3v-ray export --checkpoint runs/sweep/trial_0/checkpoint_000003 --out exports/best
  phi3v-ray export --checkpoint runs/sweep --out exports/best            # the sweep's leaderboard winner
  phi3v-ray export --checkpoint runs/sweep/evaluation/leaderboard.json --out exports/best --dtype float16
  phi3v-ray export --checkpoint runs/sweep --out exports/best-adapter --adapter-only

A sweep without a leaderboard exports the checkpoint with the lowest validation loss; the command says which
checkpoint it chose and why. The output directory must be empty unless --overwrite.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """What to export, where, and in which form."""
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint dir or URI, sweep dir, or leaderboard.json/.csv"
    )
    parser.add_argument("--out", required=True, help="output directory (created; must be empty)")
    parser.add_argument(
        "--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16", help="weights dtype"
    )
    parser.add_argument(
        "--adapter-only", action="store_true", help="write the PEFT adapter instead of merging"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")
    parser.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard (default 2GB)")


def run(args: argparse.Namespace) -> int:
    """Export and list what was written."""
    from phi3v_ray.export.run import export_checkpoint

    result = export_checkpoint(
        args.checkpoint,
        args.out,
        dtype=args.dtype,
        adapter_only=args.adapter_only,
        overwrite=args.overwrite,
        max_shard_size=args.max_shard_size,
    )
    print(f"wrote {'adapter' if result.adapter_only else result.dtype + ' model'} to {result.out}:")
    for name in result.files:
        print(f"  {name}")
    return 0
