"""`phi3v-ray predict`: answer for product photos on disk with one checkpoint, the first thing to try after a sweep."""

from __future__ import annotations

import argparse

HELP = "name, categorise and price product photos with one checkpoint"
DESCRIPTION = """\
Runs the evaluation predictor (same preprocessing, loading and greedy generation) on one or more photos and prints
the raw answer and the parsed product, category and price.

  phi3v-ray predict --checkpoint runs/sweep/trial_0/checkpoint_000003 photo1.jpg photo2.png
  phi3v-ray predict --checkpoint s3://bucket/runs/sweep/trial_0/checkpoint_000003 photo.jpg

A checkpoint URI is copied (without its engine/ resume state) into a local cache ($PHI3V_CHECKPOINT_CACHE, else the
temp dir) first; a second call reuses the copy.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """A checkpoint directory and image paths."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory or URI (holds meta.json)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="product photos")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="generation length limit")


def run(args: argparse.Namespace) -> int:
    """Answer every photo with the checkpoint, print one block per photo."""
    from phi3v_ray.evaluation.answering import answer_images

    for answer in answer_images(args.checkpoint, args.images, max_new_tokens=args.max_new_tokens):
        parsed = answer.parsed
        print(answer.image)
        print(f"  answer:   {answer.text}")
        print(f"  product:  {parsed.title}")
        print(f"  category: {parsed.category}")
        print(f"  price:    {'' if parsed.full_price is None else parsed.full_price}")
        if parsed.error:
            print(f"  could not read: {parsed.error}")
    return 0
