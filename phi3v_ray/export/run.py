"""Export one checkpoint: choose it, merge it (or package its adapter), write the official layout and the model
card into a staging folder, then move that into place, so a failed export never leaves a half-written directory.

Memory: the base is read one tensor at a time and written one shard at a time (phi3v_ray.export.shards), so the
peak is about one output shard plus the largest tensor in float32, not a model copy (benchmarks/export.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from phi3v_ray.checkpoint import ADAPTER_DIR, META_FILE, MODEL_DIR, CheckpointMeta, model_source, read_meta
from phi3v_ray.errors import CheckpointError, ConfigError
from phi3v_ray.export.choose import Choice, choose_checkpoint
from phi3v_ray.model.loading import DTYPES, parse_size

DEFAULT_DTYPE = "bfloat16"
DEFAULT_SHARD_SIZE = (
    "2GB"  # 4.2B in bf16 = 5 shards; peak memory holds about one shard twice (safetensors serialises it)
)
# Everything an export writes; an --overwrite never deletes a directory holding anything else.
EXPORT_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "model.safetensors.index.json",
    "model*.safetensors",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
)


@dataclass(frozen=True)
class ExportResult:
    """What was exported where, and why that checkpoint."""

    choice: Choice
    out: Path
    dtype: str
    adapter_only: bool
    files: list[str]


def merge_dtype(name: str) -> torch.dtype:
    """The export dtype, if this machine can merge in float32 and cast to it; ConfigError naming it otherwise."""
    if name not in DTYPES:
        raise ConfigError(f"--dtype {name!r}: cannot export in it; expected one of {', '.join(DTYPES)}")
    dtype = DTYPES[name]
    try:  # the merge's own operations, on a scrap: fails fast here rather than after minutes of work
        (torch.ones(2, 2) @ torch.ones(2, 2)).to(dtype).to(torch.float32)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"--dtype {name}: this machine cannot merge and cast to it ({error})") from None
    return dtype


def check_output_dir(out: Path, overwrite: bool) -> None:
    """The output must be new or empty; with --overwrite it may hold a previous export, and nothing else."""
    if not out.exists():
        return
    if not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a directory")
    entries = sorted(out.iterdir())
    if not entries:
        return
    if not overwrite:
        raise CheckpointError(f"{out}: output directory is not empty; pass --overwrite to replace its export")
    foreign = [p.name for p in entries if p.is_dir() or not any(p.match(pat) for pat in EXPORT_FILE_PATTERNS)]
    if foreign:
        raise CheckpointError(
            f"{out}: --overwrite refused: holds {', '.join(foreign[:5])}, which an export never writes"
        )


def _merge_into(staging: Path, checkpoint: Path, meta: CheckpointMeta, dtype: torch.dtype, shard_bytes: int):
    """Stream the merged (or converted) weights into shards; return the config the files describe."""
    from phi3v_ray.export.adapter import read_adapter
    from phi3v_ray.export.base_weights import BaseWeights, check_fingerprint
    from phi3v_ray.export.merge import merged_stream
    from phi3v_ray.export.shards import ShardWriter

    meta_path = checkpoint / META_FILE
    if meta.mode == "lora":
        adapter = read_adapter(checkpoint / ADAPTER_DIR)
        weights = BaseWeights.open(model_source(meta.base_model), where=str(meta_path))
        check_fingerprint(
            weights, meta.base_fingerprint, source=model_source(meta.base_model), meta_path=meta_path
        )
        missing = sorted(adapter.expected_names() - set(weights.names()))
        if missing:
            raise CheckpointError(
                f"{adapter.source}: {len(missing)} adapter weight(s) name no tensor of base "
                f"{model_source(meta.base_model)!r} (e.g. {missing[0]}); the adapter was trained on another base"
            )
    else:
        adapter = None
        weights = BaseWeights.open(str(checkpoint / MODEL_DIR), where=str(meta_path))
    writer = ShardWriter(staging, shard_bytes)
    for name, tensor in merged_stream(weights.tensors(), adapter, dtype):
        writer.add(name, tensor)
    writer.close()
    config = weights.config
    config.num_crops = meta.base_model.num_crops  # as trained: the preprocessor must cut images the same way
    return config


def _tokenizer_for(meta: CheckpointMeta):
    """The tokenizer the checkpoint trained with: the base's own, the configured one, or the tiny one."""
    from phi3v_ray.model.loading import PRESETS, resolve_model_dir
    from phi3v_ray.model.tokenizer import load_tokenizer

    base = meta.base_model
    if base.tokenizer is not None:
        return load_tokenizer(base.tokenizer)
    source = model_source(base)
    if source in PRESETS:
        if source == "official":
            raise CheckpointError("base_model: preset 'official' has no tokenizer; set model.tokenizer")
        return load_tokenizer(None)
    return load_tokenizer(resolve_model_dir(source))


def export_choice(
    choice: Choice,
    out: str | Path,
    *,
    dtype: str = DEFAULT_DTYPE,
    adapter_only: bool = False,
    overwrite: bool = False,
    max_shard_size: int | str = DEFAULT_SHARD_SIZE,
) -> ExportResult:
    """Export an already chosen checkpoint into `out`."""
    from phi3v_ray.export.model_card import CardFacts, render_card, split_row_counts
    from phi3v_ray.export.official_layout import write_non_weight_files

    out = Path(out)
    check_output_dir(out, overwrite)
    torch_dtype = merge_dtype(dtype)
    meta = read_meta(choice.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        if adapter_only:
            from phi3v_ray.export.adapter_only import write_adapter_package

            write_adapter_package(choice.path, meta, staging)
        else:
            config = _merge_into(staging, choice.path, meta, torch_dtype, parse_size(max_shard_size))
            write_non_weight_files(staging, config, _tokenizer_for(meta), dtype)
        facts = CardFacts(meta, choice, dtype, adapter_only, split_row_counts(meta.experiment))
        (staging / "README.md").write_text(render_card(facts), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)  # check_output_dir allowed only an empty dir or a previous export's files
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(choice, out, dtype, adapter_only, sorted(p.name for p in out.iterdir()))


def export_checkpoint(
    checkpoint: str, out: str | Path, *, echo: Callable[[str], None] = print, **options
) -> ExportResult:
    """Choose the checkpoint `checkpoint` designates (directory, URI, sweep, leaderboard), say why, export it."""
    choice = choose_checkpoint(checkpoint)
    echo(f"exporting {choice.name}: {choice.reason}")
    return export_choice(choice, out, **options)


def export_best(
    leaderboard: Any, checkpoints: list[str], out: str | Path, *, primary_metric: str, **options
) -> ExportResult:
    """`evaluate --export-best`: export the winner of a leaderboard just computed over `checkpoints`."""
    from phi3v_ray.checkpoint import local_checkpoint
    from phi3v_ray.evaluation.discovery import discover_checkpoints
    from phi3v_ray.export.choose import Leaderboard, winner

    good, _ = discover_checkpoints(checkpoints)
    paths = {info.name: info.path for info in good}

    def resolve(name: str) -> Path:
        if name not in paths:
            raise CheckpointError(f"leaderboard: its winner {name!r} points at a missing checkpoint")
        return local_checkpoint(paths[name])

    rows = json.loads(leaderboard.to_json(orient="records"))
    board = Leaderboard(rows, primary_metric, "the leaderboard just computed")
    return export_choice(winner(board, resolve), out, **options)
