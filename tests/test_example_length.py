"""Over-long examples are rejected at prepare time (`too_long` in the rejects log), with the limit in the config.

A 32,000-character title once became an 18,097-token training example, longer than the tiny model's 8,192
positions, and training on it ran away in memory. These tests prepare real rows (real tokenizer, real image, the
actor class Ray Data runs, called in process) and read the rejects log back from disk.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phi3v_ray.config import config_from_dict
from phi3v_ray.data.examples import REASON_TOO_LONG, prepare_row, processor_settings
from phi3v_ray.data.preprocess import ExamplePreparer
from phi3v_ray.data.rejects import RejectsLog
from phi3v_ray.data.synth import synth_catalog
from phi3v_ray.errors import ConfigError

# 32,000 characters of varied words, like the scraped title that went wrong (a repeated phrase would compress).
_WORDS = np.random.default_rng(0).choice(list("abcdefghijklmnopqrstuvwxyz"), size=(5334, 5))
LONG_TITLE = " ".join("".join(word) for word in _WORDS)[:32_000]


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Three ok catalog rows with real images; the second gets the 32,000-character title."""
    directory = synth_catalog(tmp_path_factory.mktemp("long") / "c", 3, seed=2, broken_url_share=0.0)
    frame = pd.read_parquet(directory / "manifest.parquet").head(3).reset_index(drop=True)
    frame["local_image_path"] = [str(directory / path) for path in frame["local_image_path"]]
    frame.loc[1, "title"] = LONG_TITLE
    frame["row_id"] = np.arange(len(frame), dtype=np.int64)
    return frame


@pytest.fixture(scope="module")
def settings():
    return processor_settings(config_from_dict({}))


def test_the_default_limit_is_in_the_config_and_under_both_presets_positions(settings) -> None:
    assert settings.max_example_tokens == config_from_dict({}).data.max_example_tokens == 4096
    official = config_from_dict({"model": {"preset": "official"}})
    assert official.data.max_example_tokens <= 131072 and settings.max_example_tokens <= 8192


def test_a_limit_above_the_models_positions_is_refused_naming_the_key() -> None:
    config = config_from_dict({"data": {"max_example_tokens": 9000}})
    with pytest.raises(
        ConfigError, match=r"data.max_example_tokens: 9000 is more than the model's 8192 positions"
    ):
        processor_settings(config)
    with pytest.raises(ConfigError, match="data.max_example_tokens"):
        config_from_dict({"data": {"max_example_tokens": 0}})


def test_the_limit_is_part_of_the_prepared_cache_key(settings) -> None:
    other = processor_settings(config_from_dict({"data": {"max_example_tokens": 2048}}))
    assert other.cache_fields()["max_example_tokens"] == 2048
    assert other.cache_fields() != settings.cache_fields()


def test_a_32000_character_title_is_rejected_as_too_long_with_its_length(rows, settings) -> None:
    processor = settings.build_processor()
    row = rows.iloc[1].to_dict()
    unlimited, _ = prepare_row(row, processor, prompt_only=False)
    assert unlimited is not None and len(unlimited["input_ids"]) > 8192  # what slipped through before
    example, reject = prepare_row(row, processor, prompt_only=False, max_tokens=4096)
    assert example is None
    assert reject["reason"] == REASON_TOO_LONG
    assert reject["detail"] == f"{len(unlimited['input_ids'])} tokens; data.max_example_tokens is 4096"
    normal, nothing = prepare_row(rows.iloc[0].to_dict(), processor, prompt_only=False, max_tokens=4096)
    assert normal is not None and nothing is None and len(normal["input_ids"]) <= 4096


def test_the_actor_leaves_the_long_row_out_and_the_rejects_log_reconciles(
    rows, settings, tmp_path: Path
) -> None:
    rejects_dir = tmp_path / "rejects"
    rejects_dir.mkdir()
    preparer = ExamplePreparer(settings, prompt_only=False, rejects_dir=str(rejects_dir))
    batch = {name: rows[name].to_numpy() for name in rows.columns}
    produced = list(preparer(batch))
    prepared_ids = [int(i) for block in produced for i in block["row_id"]]
    assert prepared_ids == [0, 2]
    log = RejectsLog(directory=str(rejects_dir), input_rows=len(rows))
    summary = log.summary(len(prepared_ids))
    assert summary.reconciles and summary.by_reason == {REASON_TOO_LONG: 1}
    assert log.read()["row_id"].tolist() == [1]


def test_a_lower_limit_from_the_config_reaches_the_actor(rows, settings, tmp_path: Path) -> None:
    tight = dataclasses.replace(settings, max_example_tokens=64)  # below any example with an image
    preparer = ExamplePreparer(tight, prompt_only=False, rejects_dir=str(tmp_path))
    assert list(preparer({name: rows[name].to_numpy() for name in rows.columns})) == []
    assert RejectsLog(directory=str(tmp_path), input_rows=3).summary(0).by_reason == {REASON_TOO_LONG: 3}
