"""Bytes shipped to the model and CLIP crops encoded per product photo: our uint8 canvas vs the official tensor.

Baseline (measured in the same run, from the same image sizes): the official processor ships float32
(num_crops+1, 3, 336, 336) per image (global view + crops, zero-padded to num_crops+1) and CLIP encodes all of them.
Ours ships the uint8 HD canvas (3, H, W) and encodes only the real crops plus the global view.
Also reported: bytes per example once a batch is collated (canvases padded to the batch's largest), for batches
in arrival order vs `group_by_grid` batches.

Run (after ./setup.sh installs the package; or prefix PYTHONPATH=.): python benchmarks/input_bytes.py [--images 2000] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict

from phi3v_ray.model.geometry import hd_canvas_size, num_image_tokens
from phi3v_ray.model.processing import group_by_grid

CROP = 336
TEXT_TOKENS = 18 + 30  # prompt text around the image span + a typical answer
# (aspect class, width:height, share of a product catalog); mostly portrait packshots.
ASPECT_MIX: tuple[tuple[str, tuple[int, int], float], ...] = (
    ("portrait 3:4", (3, 4), 0.40),
    ("portrait 2:3", (2, 3), 0.30),
    ("square 1:1", (1, 1), 0.15),
    ("landscape 4:3", (4, 3), 0.08),
    ("landscape 16:9", (16, 9), 0.07),
)


def sample_sizes(count: int, seed: int = 0) -> list[tuple[str, int, int]]:
    """(class, width, height) for `count` photos: long side uniform in 300–1600 px, ratios from ASPECT_MIX."""
    rng = random.Random(seed)
    names = [name for name, _, _ in ASPECT_MIX]
    weights = [share for _, _, share in ASPECT_MIX]
    ratios = {name: ratio for name, ratio, _ in ASPECT_MIX}
    sizes = []
    for _ in range(count):
        name = rng.choices(names, weights)[0]
        rw, rh = ratios[name]
        long_side = rng.randint(300, 1600)
        if rw >= rh:
            sizes.append((name, long_side, max(1, round(long_side * rh / rw))))
        else:
            sizes.append((name, max(1, round(long_side * rw / rh)), long_side))
    return sizes


def batch_bytes(batch: list[dict]) -> int:
    """uint8 bytes of one collated pixel batch: every canvas padded to the batch's largest H and W."""
    max_h = max(int(e["image_size"][0]) for e in batch)
    max_w = max(int(e["image_size"][1]) for e in batch)
    return len(batch) * 3 * max_h * max_w


def report(sizes: list[tuple[str, int, int]], num_crops: int, batch_size: int) -> None:
    """Print per-class and overall bytes/crops with ratios official ÷ ours, and the collated-batch figures."""
    official_bytes = (num_crops + 1) * 3 * CROP * CROP * 4
    official_crops = num_crops + 1
    per_class: dict[str, list[tuple[int, int]]] = defaultdict(list)
    examples = []
    for name, width, height in sizes:
        canvas_h, canvas_w = hd_canvas_size(width, height, num_crops, CROP)
        crops = (canvas_h // CROP) * (canvas_w // CROP) + 1
        per_class[name].append((3 * canvas_h * canvas_w, crops))
        tokens = num_image_tokens(width=width, height=height, num_crops=num_crops) + TEXT_TOKENS
        examples.append({"image_size": (canvas_h, canvas_w), "input_ids": range(tokens)})

    print(
        f"\n=== num_crops = {num_crops}: official float32 ({official_crops}, 3, {CROP}, {CROP}) per image ==="
    )
    header = f"{'aspect class':<16}{'n':>6}{'ours MB':>10}{'official MB':>13}{'bytes ×':>9}{'ours crops':>12}"
    print(header + f"{'official':>10}{'crops ×':>9}")
    all_rows = []
    for name, _, _ in ASPECT_MIX:
        rows = per_class.get(name, [])
        if not rows:
            continue
        all_rows += rows
        _print_row(name, rows, official_bytes, official_crops)
    _print_row("all", all_rows, official_bytes, official_crops)

    arrival = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    grouped = group_by_grid(examples, batch_size)
    arrival_mb = sum(batch_bytes(b) for b in arrival) / len(examples) / 1e6
    grouped_mb = sum(batch_bytes(b) for b in grouped) / len(examples) / 1e6
    print(
        f"collated (batch {batch_size}) MB/example: official {official_bytes / 1e6:.2f} | "
        f"ours arrival order {arrival_mb:.2f} (×{official_bytes / 1e6 / arrival_mb:.2f} fewer) | "
        f"ours group_by_grid {grouped_mb:.2f} (×{official_bytes / 1e6 / grouped_mb:.2f} fewer)"
    )


def _print_row(name: str, rows: list[tuple[int, int]], official_bytes: int, official_crops: int) -> None:
    ours_bytes = sum(b for b, _ in rows) / len(rows)
    ours_crops = sum(c for _, c in rows) / len(rows)
    print(
        f"{name:<16}{len(rows):>6}{ours_bytes / 1e6:>10.2f}{official_bytes / 1e6:>13.2f}"
        f"{official_bytes / ours_bytes:>9.2f}{ours_crops:>12.2f}{official_crops:>10}{official_crops / ours_crops:>9.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    sizes = sample_sizes(args.images)
    print(
        f"{args.images} product photos, long side 300–1600 px; ratios are official ÷ ours (higher = we ship less)"
    )
    for num_crops in (16, 4):
        report(sizes, num_crops, args.batch_size)


if __name__ == "__main__":
    main()
