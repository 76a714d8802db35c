"""Training throughput: Ray Train + DeepSpeed (N workers) vs a plain single-process PyTorch loop, same run.

Both sides train the tiny preset with the same LoRA settings on the same prepared batches (global batch =
workers x micro-batch) and the same number of CPU cores. The Ray side's rate comes from the W&B offline history its
rank 0 wrote (timestamps of optimizer steps after warm-up), so it includes every per-step cost of the real loop:
collation, DeepSpeed step, all-reduces, the Ray report barrier and W&B logging. Target ratio: >= 0.8.
Also prints the dry-run memory table for the official model.

    python benchmarks/train_step.py [--steps 80] [--workers 2] [--micro-batch 8] [--cores 2]

The default micro-batch is demo.yaml's (8 per worker, 16 per step). At micro-batch 2 a tiny-model step is ~30 ms
and the fixed per-step costs (three small gloo collectives, the DeepSpeed step) dominate: measured 0.37 there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The W&B offline-run reader is test scaffolding: it lives in tests/support, importable once tests/ is on the path.
sys.path.insert(0, str(REPO_ROOT / "tests"))
COLOURS = [(200, 30, 30), (30, 160, 40), (30, 40, 190), (210, 180, 40), (120, 40, 160), (20, 170, 170)]


def prepared_rows(count: int) -> list[dict]:
    """Prepared examples (Ray Data row contract) of solid-shape product photos, via the real processor."""
    import numpy as np
    from PIL import Image, ImageDraw

    from phi3v_ray.data.answers import format_answer
    from phi3v_ray.model.configuration import Phi3VConfig
    from phi3v_ray.model.processing import Phi3VProcessor
    from phi3v_ray.model.tokenizer import load_tokenizer

    processor = Phi3VProcessor.from_config(Phi3VConfig.preset("tiny"), load_tokenizer(None))
    rows = []
    for index in range(count):
        image = Image.new("RGB", (112, 112), (255, 255, 255))
        ImageDraw.Draw(image).rectangle((16, 16, 96, 96), fill=COLOURS[index % len(COLOURS)])
        answer = format_answer(f"Product {index % len(COLOURS)}", "COATS", 100.0 + 10 * index)
        example = processor.encode_product(image, answer)
        rows.append(
            {
                "input_ids": np.asarray(example["input_ids"], dtype=np.int32),
                "labels": np.asarray(example["labels"], dtype=np.int32),
                "pixel_values": np.asarray(example["pixel_values"], dtype=np.uint8),
                "image_size": np.asarray(example["image_size"], dtype=np.int32),
                "product_code": index,
            }
        )
    return rows


def experiment(tmp: Path, steps: int, workers: int, micro_batch: int, cores: int, report_every: int | None):  # noqa: ANN201
    from phi3v_ray.config import load_experiment

    return load_experiment(
        REPO_ROOT / "experiments" / "demo.yaml",
        [
            f"run.storage_path={tmp / 'runs'}",
            f"wandb.dir={tmp / 'wandb'}",
            "wandb.mode=offline",
            f"run.max_steps={steps}",
            f"run.eval_every={steps}",
            f"run.checkpoint_every={steps}",
            "run.val_generate_samples=0",
            "run.name=bench",
            f"scaling.num_workers={workers}",
            f"scaling.cpus_per_worker={cores / workers}",
            f"optim.micro_batch={micro_batch}",
            "data.length_grouping=false",
            f"run.report_every={'null' if report_every is None else report_every}",
        ],
    )


def ray_rate(config, rows: list[dict], warmup: int) -> tuple[float, float]:  # noqa: ANN001
    """(samples/s, tokens/s) of the Ray Train + DeepSpeed loop, from rank 0's W&B step timestamps."""
    import ray

    from phi3v_ray.tracking import find_offline_runs
    from phi3v_ray.train.launcher import build_trainer

    from support.wandb_files import read_offline_run

    datasets = {
        "train": ray.data.from_items(rows),
        "val": ray.data.from_items(rows[: 2 * config.scaling.num_workers]),
    }
    result = build_trainer(config, datasets).fit()
    if result.error:
        raise RuntimeError(result.error)
    (folder,) = find_offline_runs(config.wandb.dir, "bench")
    history = [row for row in read_offline_run(folder).history if "train/loss" in row]
    stamps = {int(row["trainer/step"]): float(row["_timestamp"]) for row in history}
    last = max(stamps)
    seconds = stamps[last] - stamps[warmup]
    samples = (last - warmup) * config.optim.micro_batch * config.scaling.num_workers
    tokens_per_sample = statistics.fmean(
        float(row["train/tokens_per_s"]) / float(row["train/samples_per_s"]) for row in history
    )
    return samples / seconds, samples * tokens_per_sample / seconds


def plain_rate(config, rows: list[dict], steps: int, warmup: int, threads: int) -> tuple[float, float]:  # noqa: ANN001
    """(samples/s, tokens/s) of one process with `threads` intra-op threads: same model, LoRA, AdamW, global batch."""
    import torch

    from phi3v_ray.model.loading import load_model
    from phi3v_ray.model.processing import Phi3VProcessor
    from phi3v_ray.train.trainable import apply_training_mode

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, tokenizer = load_model("tiny")
    processor = Phi3VProcessor.from_config(model.config, tokenizer)
    model = apply_training_mode(model, config.finetune)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.optim.lr)
    batch_size = config.optim.micro_batch * config.scaling.num_workers
    samples = tokens = 0
    started = 0.0
    for step in range(steps):
        if step == warmup:
            started, samples, tokens = time.perf_counter(), 0, 0
        start = (step * batch_size) % (len(rows) - batch_size + 1)
        batch = processor.collate(rows[start : start + batch_size])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        samples += batch_size
        tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - started
    return samples / seconds, tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--cores", type=int, default=2, help="CPUs given to Ray and to the plain loop")
    args = parser.parse_args()

    import ray

    from phi3v_ray.config import config_from_dict
    from phi3v_ray.train.dry_run import dry_run_report  # noqa: F401 - same code path as --dry-run
    from phi3v_ray.train.memory import ModelDims, memory_table, tokens_per_sample

    rows = prepared_rows(args.steps * args.micro_batch * args.workers)
    ray_rates: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        config = experiment(
            Path(tmp_dir) / "plain", args.steps, args.workers, args.micro_batch, args.cores, None
        )
        # The baseline gets its best thread count on these cores (oversubscribed threads can be far slower).
        by_threads = {
            threads: plain_rate(config, rows, args.steps, args.warmup, threads)
            for threads in range(1, args.cores + 1)
        }
        ray.init(
            num_cpus=args.cores,
            include_dashboard=True,
            log_to_driver=False,
            runtime_env={"env_vars": {"WANDB_MODE": "offline", "DS_ACCELERATOR": "cpu"}},
        )
        # Default: Ray gets a report at each validation/checkpoint (here: the end); W&B still logs every step.
        for label, report_every in (("reports at validation", None), ("reports every step", 1)):
            run_config = experiment(
                Path(tmp_dir) / label.replace(" ", "_"),
                args.steps,
                args.workers,
                args.micro_batch,
                args.cores,
                report_every,
            )
            ray_rates[label] = ray_rate(run_config, rows, args.warmup)
        ray.shutdown()

    best_threads = max(by_threads, key=lambda threads: by_threads[threads][0])
    plain_samples, plain_tokens = by_threads[best_threads]
    print(
        f"\ntiny preset, LoRA r={config.finetune.rank}, global batch {args.micro_batch * args.workers}, "
        f"{args.cores} CPU cores, {args.steps} steps ({args.warmup} warm-up)"
    )
    print(f"{'':<52}{'samples/s':>11}{'tokens/s':>11}{'ratio':>8}")
    for threads, (samples, tokens) in by_threads.items():
        print(
            f"{f'plain PyTorch, 1 process, {threads} thread(s)':<52}{samples:>11.2f}{tokens:>11.1f}"
            f"{samples / plain_samples:>8.2f}"
        )
    for label, (samples, tokens) in ray_rates.items():
        print(
            f"{f'Ray Train + DeepSpeed ZeRO-2, {args.workers} workers, {label}':<52}{samples:>11.2f}"
            f"{tokens:>11.1f}{samples / plain_samples:>8.2f}"
        )
    print(f"(ratio = samples/s against the best plain loop, {best_threads} thread(s); target >= 0.8)")

    dims = ModelDims.for_preset("official")
    seq_len = tokens_per_sample(dims, 16)
    settings = {
        "LoRA r=16, ZeRO-2, 4 GPUs": {"deepspeed": {"zero_stage": 2}},
        "LoRA r=16, ZeRO-3, 4 GPUs": {"deepspeed": {"zero_stage": 3}},
        "full fine-tune, ZeRO-3, 8 GPUs": {"finetune": {"mode": "full"}, "deepspeed": {"zero_stage": 3}},
        "full fine-tune, ZeRO-3 + CPU optimizer offload, 8 GPUs": {
            "lora": {"mode": "full"},
            "deepspeed": {"zero_stage": 3, "offload_optimizer": True},
        },
    }
    for title, sections in settings.items():
        raw = {
            "model": {"preset": "official", "dtype": "bfloat16", "num_crops": 16},
            "scaling": {"use_gpu": True},
            "optim": {"micro_batch": 1},
            **sections,
        }
        world = 8 if "8 GPUs" in title else 4
        print(f"\n## official model: {title}, micro-batch 1")
        print(memory_table(dims, config_from_dict(raw), world_size=world, seq_len=seq_len))


if __name__ == "__main__":
    main()
