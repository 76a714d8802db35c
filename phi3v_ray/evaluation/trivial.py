"""The trivial contestant: the answer you get from training-set statistics alone, without looking at the photo.

It sits on the leaderboard so that a checkpoint's scores read as lift over "always say the majority category at
the median price", not as absolute numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from phi3v_ray.data.answers import format_answer
from phi3v_ray.errors import DataError
from phi3v_ray.evaluation.metrics import normalise_text

TRIVIAL_NAME = "trivial"


@dataclass(frozen=True)
class TrivialPredictor:
    """Majority category, median price and the most common title words of the training split."""

    category: str
    full_price: float
    title: str

    @classmethod
    def fit(
        cls, titles: Sequence[str], categories: Sequence[str], prices: Sequence[float]
    ) -> TrivialPredictor:
        """Compute the statistics from the training split's rows (all three sequences aligned)."""
        if not (len(titles) == len(categories) == len(prices)):
            raise DataError(
                f"trivial predictor: titles/categories/prices differ in length "
                f"({len(titles)}, {len(categories)}, {len(prices)})"
            )
        if len(titles) == 0:
            raise DataError("trivial predictor: the training split has no rows to take statistics from")
        category_counts = Counter(" ".join(str(c).split()) for c in categories)
        # ties go to the category seen first, so the choice does not depend on hash order
        category = max(category_counts, key=lambda name: category_counts[name])
        price_values = np.asarray([float(p) for p in prices], dtype=float)
        price_values = price_values[np.isfinite(price_values)]
        if price_values.size == 0:
            raise DataError("trivial predictor: no finite full_price in the training split")
        word_counts: Counter[str] = Counter()
        first_spelling: dict[str, str] = {}
        lengths = []
        for title in titles:
            words = str(title).split()
            lengths.append(len(words))
            for word in words:
                key = normalise_text(word)
                first_spelling.setdefault(key, word)
                word_counts[key] += 1
        title_length = max(1, int(np.median(lengths)))
        top_words = [first_spelling[key] for key, _ in word_counts.most_common(title_length)]
        return cls(category=category, full_price=float(np.median(price_values)), title=" ".join(top_words))

    def answer(self) -> str:
        """The answer text it gives for every product, in the format checkpoints are trained to write."""
        return format_answer(self.title, self.category, self.full_price)
