"""`phi3v-ray predict`: answer for product photos on disk with one checkpoint, the first thing to try after a sweep."""

from __future__ import annotations

import argparse

HELP = "name, categorise and price product photos with one checkpoint"
DESCRIPTION = """\
Runs the evaluation predictor (same loading and greedy generation) on one or more photos and prints the raw
answer and the parsed product, category and price.

  phi3v-ray predict --checkpoint runs/sweep/trial_0/checkpoint_000003 photo1.jpg photo2.png
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """A checkpoint directory and image paths."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (holds meta.json)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="product photos")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="generation length limit")


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint once, answer every photo in one batch, print one block per photo."""
    import numpy as np

    from phi3v_ray.data.images import decode_image
    from phi3v_ray.errors import CheckpointError, DataError
    from phi3v_ray.evaluation.checkpoints import base_model_source, discover_checkpoints
    from phi3v_ray.evaluation.predictor import CheckpointPredictor, ContestantSpec

    good, broken = discover_checkpoints([args.checkpoint])
    if broken:
        raise CheckpointError(f"{broken[0].path}: {broken[0].reason}")
    checkpoint = good[0]
    path = checkpoint.adapter_dir if checkpoint.mode == "lora" else checkpoint.model_dir
    spec = ContestantSpec(checkpoint.name, checkpoint.mode, str(path), checkpoint.content_key)
    predictor = CheckpointPredictor(
        base_model_source(checkpoint.base_model),
        [spec.to_dict()],
        max_new_tokens=args.max_new_tokens,
        dtype=checkpoint.base_model.get("dtype", "float32"),
        attention=checkpoint.base_model.get("attention", "sdpa"),
    )
    if spec.name in predictor.load_errors:
        raise CheckpointError(f"{checkpoint.path}: {predictor.load_errors[spec.name]}")
    rows = []
    for image_path in args.images:
        decoded = decode_image(
            image_path, num_crops=predictor.processor.num_crops, crop_size=predictor.processor.crop_size
        )
        if decoded.image is None:
            raise DataError(f"{image_path}: cannot use this image ({decoded.reason}: {decoded.detail})")
        rows.append(predictor.processor.encode_product(decoded.image))
    batch = {
        "input_ids": [row["input_ids"] for row in rows],
        "pixel_values": [row["pixel_values"] for row in rows],
        "image_size": [row["image_size"] for row in rows],
        "product_code": np.arange(len(rows)),
        "title": np.array([None] * len(rows), dtype=object),
        "category": np.array([None] * len(rows), dtype=object),
        "full_price": np.full(len(rows), np.nan),
    }
    output = predictor(batch)
    for index, image_path in enumerate(args.images):
        print(f"{image_path}")
        print(f"  answer:   {output['prediction'][index]}")
        print(f"  product:  {output['pred_title'][index]}")
        print(f"  category: {output['pred_category'][index]}")
        price = output["pred_full_price"][index]
        print(f"  price:    {'' if np.isnan(price) else price}")
        if output["parse_error"][index]:
            print(f"  could not read: {output['parse_error'][index]}")
    return 0
