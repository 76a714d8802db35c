"""Batches for the trainer: a worker's shard of prepared examples → micro-batches of examples → model tensors.

Batching belongs to training, not to data preparation: how examples are grouped (length grouping, padding) is a
training-speed choice, and the collate step needs the model's processor. Grouping similar canvases together cuts
the padded positions, which `PaddingReport` measures.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phi3v_ray.model.processing import Phi3VProcessor


def rows_from_batch(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """A column batch from `iter_batches(batch_format="numpy")` → one dict per example."""
    names = list(batch)
    count = len(batch[names[0]]) if names else 0
    return [{name: batch[name][i] for name in names} for i in range(count)]


def collate_rows(
    batch: dict[str, Any], processor: Phi3VProcessor, padding_side: str = "right"
) -> dict[str, Any]:
    """Model-ready tensors from one `iter_batches` batch: ids/labels padded to a multiple of 8, canvases batched."""
    examples = rows_from_batch(batch)
    return processor.collate(
        [
            {
                "input_ids": example["input_ids"],
                "labels": example.get("labels"),
                "pixel_values": example["pixel_values"],
                "image_size": example["image_size"],
            }
            for example in examples
        ],
        padding_side=padding_side,
    )


@dataclass
class PaddingReport:
    """Running share of padded token positions over the batches yielded so far."""

    padded_positions: int = 0
    total_positions: int = 0

    def add(self, lengths: Sequence[int], pad_to_multiple_of: int = 8) -> None:
        """Count one batch whose sequences have these lengths."""
        if not lengths:
            return
        longest = math.ceil(max(lengths) / pad_to_multiple_of) * pad_to_multiple_of
        self.total_positions += longest * len(lengths)
        self.padded_positions += longest * len(lengths) - sum(lengths)

    @property
    def share(self) -> float:
        """Padded positions / all positions (0 before any batch)."""
        return self.padded_positions / self.total_positions if self.total_positions else 0.0


def iter_example_batches(
    dataset: Any,
    *,
    batch_size: int,
    length_grouping: bool = True,
    buffer_batches: int = 8,
    shuffle_seed: int | None = None,
    report: PaddingReport | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Lists of examples from a dataset or a worker's shard; with grouping, similar canvases share a batch.

    Grouping looks only `buffer_batches` batches ahead, so it keeps streaming and keeps the shard's order roughly
    intact (a full sort would wait for the whole epoch). `shuffle_seed` permutes the examples inside each such
    window first, so an epoch's batches differ from the last epoch's; the permutation depends only on the seed and
    the window's place in the stream, so a resumed run skips exactly the batches the lost one trained.
    """
    from phi3v_ray.model.processing import group_by_grid

    window = batch_size * (buffer_batches if length_grouping or shuffle_seed is not None else 1)
    for index, column_batch in enumerate(dataset.iter_batches(batch_size=window, batch_format="numpy")):
        examples = rows_from_batch(column_batch)
        if shuffle_seed is not None:
            random.Random(f"{shuffle_seed}:{index}").shuffle(examples)
        if length_grouping:
            groups = group_by_grid(examples, batch_size)
        else:
            groups = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
        for group in groups:
            if report is not None:
                report.add([len(example["input_ids"]) for example in group])
            yield group
