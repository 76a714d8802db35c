"""`phi3v-ray predict`: answer for product photos on disk with one checkpoint, the first thing to try after a sweep."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported for real inside run(), so --help stays instant
    from phi3v_ray.evaluation.answering import Answer

HELP = "name, categorise and price product photos with one checkpoint"
DESCRIPTION = """\
Runs the evaluation predictor (same preprocessing, loading and greedy generation) on one or more photos and prints
the raw answer and the parsed product, category and price.

  phi3v-ray predict --checkpoint runs/sweep/trial_0/checkpoint_000003 photo1.jpg photo2.png
  phi3v-ray predict --checkpoint s3://bucket/runs/sweep/trial_0/checkpoint_000003 photo.jpg

--checkpoint may also be a trial or sweep directory: the checkpoint with the lowest val_loss below it answers, and
the command says which one it picked. A photo that cannot be used (missing, a web URL, not an image) is reported
and the others are still answered; the exit status is then 1. --json prints one JSON list, one object per photo.

A checkpoint URI is copied (without its engine/ resume state) into a local cache ($PHI3V_CHECKPOINT_CACHE, else the
temp dir) first; a second call reuses the copy.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """A checkpoint directory and image paths."""
    from phi3v_ray.commands.arguments import positive_int

    parser.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint directory or URI (holds meta.json), or a sweep/trial directory",
    )
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE", help="product photos (paths or s3:// / gs:// URIs)"
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=48, help="generation length limit")
    parser.add_argument(
        "--json", action="store_true", help="print the answers as one JSON list (machine-readable)"
    )


def run(args: argparse.Namespace) -> int:
    """Answer every usable photo with the checkpoint; exit 1 when some photo could not be used."""
    import json
    import sys

    from phi3v_ray.commands.arguments import check_input_dir
    from phi3v_ray.evaluation.answering import answer_images

    check_input_dir(args.checkpoint, "--checkpoint", "a checkpoint or sweep directory (holding meta.json)")
    answers = answer_images(
        args.checkpoint,
        args.images,
        max_new_tokens=args.max_new_tokens,
        echo=lambda line: print(f"note: {line}", file=sys.stderr),
    )
    if args.json:
        print(json.dumps([answer.to_dict() for answer in answers], indent=2))
    for answer in answers:
        if answer.problem is not None:
            print(f"error: {answer.image}: {answer.problem}", file=sys.stderr)
        elif not args.json:
            _print_answer(answer)
    unusable = sum(answer.problem is not None for answer in answers)
    if unusable:
        print(
            f"{len(answers) - unusable} of {len(answers)} photo(s) answered; {unusable} could not be used",
            file=sys.stderr,
        )
    return 1 if unusable else 0


def _print_answer(answer: Answer) -> None:
    """One block per photo: the raw answer and the fields read from it."""
    parsed = answer.parsed
    print(answer.image)
    print(f"  answer:   {answer.text}")
    print(f"  product:  {parsed.title}")
    print(f"  category: {parsed.category}")
    print(f"  price:    {'' if parsed.full_price is None else parsed.full_price}")
    if parsed.error:
        print(f"  could not read: {parsed.error}")
