"""Products × checkpoints per second: the evaluation job vs the naive way, on the same inputs in one run.

Job:   Ray Data, one predictor actor that loads the base once and every adapter by name, batched generation.
Naive: for each checkpoint, load the base and the adapter afresh, then generate one product at a time.
Both must produce identical predictions; the script asserts it and prints the throughput ratio.

    python benchmarks/evaluate.py --checkpoints 4 --products 16 --batch-size 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray starts worker processes at niceness 15 unless told otherwise (`ray job submit` sets 0 as well); the naive way
# runs in this driver at niceness 0, so on a machine shared with other work the job's actor would be starved and the
# comparison would measure the scheduler, not the code. Same priority for both ways.
os.environ.setdefault("RAY_worker_niceness", "0")
# The synthetic checkpoints are test scaffolding: they live in tests/support, importable once tests/ is on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--products", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument(
        "--cpus-per-actor",
        type=float,
        default=1.0,
        help="CPUs the predictor actor reserves (= its torch threads)",
    )
    parser.add_argument(
        "--train-steps", type=int, default=3, help="steps per adapter (makes adapters differ)"
    )
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    import ray
    from tqdm import tqdm

    from phi3v_ray.config import EvalSection, ModelSection
    from phi3v_ray.evaluation.predictor import CheckpointPredictor, ContestantSpec
    from phi3v_ray.evaluation.scoring import run_predictor
    from phi3v_ray.model.configuration import Phi3VConfig
    from phi3v_ray.model.processing import Phi3VProcessor
    from phi3v_ray.model.tokenizer import tiny_tokenizer

    from support.synthetic_checkpoints import PRODUCTS, make_lora_checkpoint, prepared_rows

    processor = Phi3VProcessor.from_config(Phi3VConfig.preset("tiny"), tiny_tokenizer())
    widths = [56, 84, 112, 140]
    products = [PRODUCTS[i % len(PRODUCTS)] for i in range(args.products)]
    rows = prepared_rows(
        processor,
        tuple(products),
        with_answer=False,
        widths=[widths[i // len(PRODUCTS) % 4] for i in range(len(products))],
    )
    for index, row in enumerate(rows):
        row["product_code"] = index  # distinct keys for the comparison

    with tempfile.TemporaryDirectory() as scratch:
        specs = []
        for index in tqdm(range(args.checkpoints), desc="making adapters"):
            directory = make_lora_checkpoint(
                Path(scratch) / f"ckpt{index}", steps=args.train_steps, lr=2e-2, seed=index
            )
            specs.append(ContestantSpec(f"ckpt{index}", "lora", str(directory / "adapter"), f"k{index}"))

        # The job's clock starts before ray.init: Ray start-up, putting the rows in the object store, the actor's
        # start-up (imports, loading the base and every adapter) and the result's trip back to pandas all count.
        start = time.perf_counter()
        ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
        dataset = ray.data.from_items(rows).materialize()
        ray_up = time.perf_counter()
        settings = EvalSection(
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, cpus_per_actor=args.cpus_per_actor
        )
        job = run_predictor(dataset, ModelSection(preset="tiny"), specs, settings)
        job_end = time.perf_counter()
        job_seconds, map_seconds = job_end - start, job_end - ray_up

        start = time.perf_counter()
        naive_records = []
        for spec in tqdm(specs, desc="naive: reload per checkpoint"):
            predictor = CheckpointPredictor("tiny", [spec.to_dict()], max_new_tokens=args.max_new_tokens)
            for row in rows:
                batch = {key: [row[key]] for key in ("input_ids", "pixel_values", "image_size")}
                batch |= {
                    key: np.array([row[key]]) for key in ("product_code", "title", "category", "full_price")
                }
                out = predictor(batch)
                naive_records.append((spec.name, int(out["product_code"][0]), out["prediction"][0]))
        naive_seconds = time.perf_counter() - start
        ray.shutdown()

    naive = pd.DataFrame(naive_records, columns=["checkpoint", "product_code", "prediction"])
    merged = (
        job[["checkpoint", "product_code", "prediction"]]
        .astype({"product_code": int})
        .merge(naive, on=["checkpoint", "product_code"], suffixes=("_job", "_naive"))
    )
    assert len(merged) == len(naive) == args.checkpoints * args.products, "row counts differ"
    mismatches = merged[merged["prediction_job"] != merged["prediction_naive"]]
    assert mismatches.empty, f"{len(mismatches)} predictions differ, e.g. {mismatches.iloc[0].to_dict()}"

    pairs = args.checkpoints * args.products
    job_rate, naive_rate = pairs / job_seconds, pairs / naive_seconds
    print(
        f"\n{args.products} products x {args.checkpoints} checkpoints = {pairs} answers, identical in both ways"
    )
    print(f"{'way':<40}{'seconds':>10}{'answers/s':>12}")
    print(f"{'naive (reload per checkpoint, batch 1)':<40}{naive_seconds:>10.1f}{naive_rate:>12.2f}")
    print(
        f"{'job (base once, adapters by name, batch ' + str(args.batch_size) + ')':<40}{job_seconds:>10.1f}{job_rate:>12.2f}"
    )
    print(f"{'  of which ray.init + rows to Ray':<40}{job_seconds - map_seconds:>10.1f}")
    print(
        f"{'  job without ray.init (actor start-up in)':<40}{map_seconds:>10.1f}{pairs / map_seconds:>12.2f}"
    )
    print(
        f"speed-up: {job_rate / naive_rate:.2f}x (with Ray start-up), {naive_seconds / map_seconds:.2f}x (Ray already up)"
    )


if __name__ == "__main__":
    main()
