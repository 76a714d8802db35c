"""Ray Data preprocessing on a generated catalog with planted bad images: contract, rejects, cache, trainer batches.

One pipeline run over the whole catalog is shared by the module (materialised once) to keep the suite fast on two
cores; the cache tests run the config-level entry points (phi3v_ray.data.datasets) for real.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from image_bombs import write_pixel_bomb_png
from PIL import Image

from phi3v_ray.config import ExperimentConfig
from phi3v_ray.data import images
from phi3v_ray.data.answers import format_answer
from phi3v_ray.data.catalog import resolve_image_paths
from phi3v_ray.data.datasets import (
    build_prepared_dataset,
    build_train_datasets,
    plan_split,
    write_prepared_split,
)
from phi3v_ray.data.examples import REASON_BAD_GROUND_TRUTH, ProcessorSettings, processor_settings
from phi3v_ray.data.preprocess import prepare_dataset
from phi3v_ray.data.split import split_catalog, with_row_ids
from phi3v_ray.data.synth import synth_catalog
from phi3v_ray.model.geometry import num_image_tokens
from phi3v_ray.model.processing import IGNORE_INDEX, hd_canvas
from phi3v_ray.train.batches import PaddingReport, collate_rows, iter_example_batches

PIPELINE_MAX_PIXELS = 4_000_000


@dataclasses.dataclass
class PlantedCatalog:
    directory: Path
    rows: pd.DataFrame  # every split row, with row ids and absolute paths
    expected_rejects: dict[int, str]  # product_code -> reason
    awkward_codes: dict[int, str]  # product_code -> what is odd about its (usable) image


def _plant(directory: Path) -> PlantedCatalog:
    splits_path = directory / "splits.parquet"
    table = pd.read_parquet(splits_path)
    train_rows = table.index[table["split"] == "train"].tolist()
    other_rows = table.index[table["split"] != "train"].tolist()
    image_of = {i: directory / table.at[i, "local_image_path"] for i in table.index}
    code_of = {i: int(table.at[i, "product_code"]) for i in table.index}
    expected: dict[int, str] = {}
    awkward: dict[int, str] = {}

    it = iter(train_rows)
    row = next(it)  # truncated JPEG
    data = image_of[row].read_bytes()
    image_of[row].write_bytes(data[: len(data) // 3])
    expected[code_of[row]] = images.REASON_TRUNCATED
    row = next(it)  # file deleted after the manifest was written
    image_of[row].unlink()
    expected[code_of[row]] = images.REASON_MISSING
    row = next(it)  # a 1×6000 strip: the HD resize would give it zero height
    Image.new("RGB", (1, 6000), "red").save(image_of[row], format="PNG")
    expected[code_of[row]] = images.REASON_ASPECT
    row = next(it)  # an HTML error page saved as .jpg
    image_of[row].write_text("<html><body>403 Forbidden</body></html>")
    expected[code_of[row]] = images.REASON_UNREADABLE
    row = next(it)  # unusable ground truth: no price
    table.at[row, "full_price"] = float("nan")
    expected[code_of[row]] = REASON_BAD_GROUND_TRUTH

    for kind in ("cmyk", "grey16", "palette", "rgba", "one_pixel"):
        row = next(it)
        size = Image.open(image_of[row]).size
        if kind == "cmyk":
            Image.new("CMYK", size, (0, 200, 200, 10)).save(image_of[row], format="JPEG")
        elif kind == "grey16":
            ramp = np.linspace(0, 65535, size[0] * size[1]).astype(np.uint16).reshape(size[1], size[0])
            Image.fromarray(ramp).save(image_of[row], format="PNG")
        elif kind == "palette":
            palette = Image.new("P", size, 1)
            palette.putpalette([0, 0, 0, 180, 40, 60] + [0] * 762)
            palette.save(image_of[row], format="PNG", transparency=0)
        elif kind == "rgba":
            Image.new("RGBA", size, (10, 120, 200, 0)).save(image_of[row], format="PNG")
        else:
            Image.new("RGB", (1, 1), (90, 90, 90)).save(image_of[row], format="PNG")
        awkward[code_of[row]] = kind

    # A pixel bomb outside the train split, so the cache test (train) sees the same rows as this run.
    row = other_rows[0]
    write_pixel_bomb_png(image_of[row], 3000, 3000)
    expected[code_of[row]] = images.REASON_TOO_MANY_PIXELS

    table.to_parquet(splits_path, index=False)
    absolute = resolve_image_paths(directory, table["local_image_path"])
    rows = with_row_ids(table.assign(local_image_path=absolute))
    return PlantedCatalog(directory, rows, expected, awkward)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> PlantedCatalog:
    directory = tmp_path_factory.mktemp("catalog")
    synth_catalog(directory, 36, seed=3, overwrite=True)
    split_catalog(directory)
    return _plant(directory)


@pytest.fixture(scope="module")
def config(catalog: PlantedCatalog) -> ExperimentConfig:
    experiment = ExperimentConfig()
    experiment.data.catalog_dir = str(catalog.directory)
    experiment.data.prepared_dir = str(catalog.directory / "prepared")
    experiment.data.preprocess_cpus = 0.5
    return experiment


@pytest.fixture(scope="module")
def settings(config: ExperimentConfig) -> ProcessorSettings:
    return dataclasses.replace(processor_settings(config), max_pixels=PIPELINE_MAX_PIXELS)


@pytest.fixture(scope="module")
def processor(settings: ProcessorSettings):
    return settings.build_processor()


@pytest.fixture(scope="module")
def run(ray_local, catalog: PlantedCatalog, settings, tmp_path_factory) -> dict[str, Any]:
    """The whole catalog through the pipeline once (training mode), materialised for the tests below."""
    dataset, rejects = prepare_dataset(
        catalog.rows,
        settings,
        prompt_only=False,
        rejects_dir=tmp_path_factory.mktemp("rejects"),
        num_actors=2,
        cpus_per_actor=0.5,
    )
    materialized = dataset.materialize()
    examples = materialized.take_all()
    return {"dataset": materialized, "examples": examples, "rejects": rejects}


def _by_code(examples: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(example["product_code"]): example for example in examples}


def test_counts_reconcile_and_every_planted_bad_row_is_rejected_with_its_reason(run, catalog) -> None:
    summary = run["rejects"].summary(len(run["examples"]))
    assert summary.reconciles, str(summary)
    assert summary.input_rows == len(catalog.rows)
    frame = run["rejects"].read()
    found = dict(zip(frame["product_code"].astype(int), frame["reason"], strict=True))
    assert found == catalog.expected_rejects
    assert frame["detail"].str.len().min() > 0
    prepared_codes = {int(example["product_code"]) for example in run["examples"]}
    assert prepared_codes.isdisjoint(found)
    assert len(prepared_codes) == len(run["examples"])


def test_awkward_but_valid_images_are_prepared_not_rejected(run, catalog) -> None:
    examples = _by_code(run["examples"])
    for code, kind in catalog.awkward_codes.items():
        assert code in examples, f"{kind} image was not prepared"
    palette_canvas = examples[next(c for c, k in catalog.awkward_codes.items() if k == "palette")][
        "pixel_values"
    ]
    assert {tuple(pixel) for pixel in palette_canvas.reshape(3, -1).T} >= {(180, 40, 60)}


def test_image_span_length_equals_token_count_formula_for_that_image(run, catalog, processor) -> None:
    paths = dict(zip(catalog.rows["product_code"].astype(int), catalog.rows["local_image_path"], strict=True))
    for example in run["examples"]:
        width, height = Image.open(paths[int(example["product_code"])]).size
        ids = np.asarray(example["input_ids"])
        positions = np.flatnonzero(ids == processor.image_token_id)
        expected = num_image_tokens(
            width=width,
            height=height,
            num_crops=processor.num_crops,
            crop_size=processor.crop_size,
            patch_size=processor.patch_size,
        )
        assert len(positions) == expected
        assert positions[-1] - positions[0] + 1 == expected  # one contiguous span


def test_labels_are_ignored_outside_the_answer_and_decode_to_exactly_the_answer(
    run, catalog, processor
) -> None:
    truth = catalog.rows.set_index(catalog.rows["product_code"].astype(int))
    for example in run["examples"]:
        ids, labels = np.asarray(example["input_ids"]), np.asarray(example["labels"])
        assert ids.dtype == np.int32 and labels.dtype == np.int32 and ids.shape == labels.shape
        labelled = np.flatnonzero(labels != IGNORE_INDEX)
        # The answer is one contiguous run at the end; everything before it (prompt, image span) is ignored.
        assert labelled.tolist() == list(range(len(ids) - len(labelled), len(ids)))
        assert np.array_equal(labels[labelled], ids[labelled])
        row = truth.loc[int(example["product_code"])]
        expected = format_answer(row["title"], row["category3_code"], row["full_price"])
        assert processor.decode(labels[labelled]) == expected
        assert labels[-2:].tolist() == [processor.end_token_id, processor.endoftext_token_id]


def test_pixel_values_are_the_uint8_hd_canvas_of_the_decoded_image(run, catalog, processor) -> None:
    paths = dict(zip(catalog.rows["product_code"].astype(int), catalog.rows["local_image_path"], strict=True))
    for example in run["examples"][:6]:
        canvas = example["pixel_values"]
        assert canvas.dtype == np.uint8 and canvas.ndim == 3 and canvas.shape[0] == 3
        assert tuple(example["image_size"]) == canvas.shape[1:]
        assert example["image_size"].dtype == np.int32
        assert canvas.shape[1] % processor.crop_size == 0 and canvas.shape[2] % processor.crop_size == 0
        decoded = images.decode_image(paths[int(example["product_code"])])
        assert np.array_equal(canvas, hd_canvas(decoded.image, processor.num_crops, processor.crop_size))


def test_prompt_only_mode_has_no_answer_in_input_and_keeps_ground_truth(
    ray_local, catalog, settings, tmp_path
):
    good = catalog.rows[~catalog.rows["product_code"].astype(int).isin(catalog.expected_rejects)].head(3)
    dataset, rejects = prepare_dataset(
        good, settings, prompt_only=True, rejects_dir=tmp_path / "rejects", num_actors=1, cpus_per_actor=0.5
    )
    examples = dataset.take_all()
    assert rejects.summary(len(examples)).reconciles and len(examples) == 3
    processor = settings.build_processor()
    for example in examples:
        assert (np.asarray(example["labels"]) == IGNORE_INDEX).all()
        prompt_tail = processor.tokenizer(processor.PROMPT + "<|end|>\n<|assistant|>\n")["input_ids"][-3:]
        assert np.asarray(example["input_ids"])[-3:].tolist() == [int(i) for i in prompt_tail]
        assert example["answer"].startswith(f"Product: {example['title']}, Category: {example['category']}")


def test_collate_rows_pads_ids_to_multiple_of_eight_and_batches_canvases(run, processor) -> None:
    batch = next(iter(run["dataset"].iter_batches(batch_size=3, batch_format="numpy")))
    collated = collate_rows(batch, processor, padding_side="right")
    assert collated["input_ids"].shape[1] % 8 == 0
    lengths = [len(ids) for ids in batch["input_ids"]]
    assert collated["attention_mask"].sum(dim=1).tolist() == lengths
    assert collated["pixel_values"].dtype.is_floating_point is False
    assert collated["pixel_values"].shape[0] == 3
    assert collated["image_sizes"].tolist() == [list(size) for size in batch["image_size"]]


def test_length_aware_batching_wastes_less_padding_than_arrival_order(run) -> None:
    grouped, plain = PaddingReport(), PaddingReport()
    for _ in iter_example_batches(run["dataset"], batch_size=4, length_grouping=True, report=grouped):
        pass
    for _ in iter_example_batches(run["dataset"], batch_size=4, length_grouping=False, report=plain):
        pass
    assert 0 <= grouped.share < plain.share


def test_prepared_cache_reads_back_the_same_examples_as_computing_afresh(run, config) -> None:
    entry, summary, reused = write_prepared_split(config, "train", prompt_only=False)
    assert not reused and summary.reconciles
    cached, rejects = build_prepared_dataset(config, "train", prompt_only=False)
    assert rejects.cached_path == entry.rejects_path
    cached_examples = _by_code(cached.take_all())
    fresh = _by_code(run["examples"])
    assert cached_examples and set(cached_examples) <= set(fresh)
    assert summary.prepared == len(cached_examples)
    for code, example in cached_examples.items():
        for name in ("input_ids", "labels", "pixel_values", "image_size"):
            assert np.array_equal(example[name], fresh[code][name]), name
            assert np.asarray(example[name]).dtype == np.asarray(fresh[code][name]).dtype, name
        for name in ("title", "category", "full_price", "answer"):
            assert example[name] == fresh[code][name], name
    # A second prepare finds the entry instead of recomputing.
    again, _, reused_again = write_prepared_split(config, "train", prompt_only=False)
    assert reused_again and again.directory == entry.directory


def test_changing_processor_settings_misses_the_cache(config) -> None:
    first = plan_split(config, "val", prompt_only=False).name
    changed = config.model_copy(deep=True)
    changed.model.num_crops = 4
    assert plan_split(changed, "val", prompt_only=False).name != first
    assert plan_split(config, "val", prompt_only=True).name != first


def test_small_cached_splits_are_materialized_once_and_hold_the_same_rows(
    ray_local, config, tmp_path
) -> None:
    from ray.data.dataset import MaterializedDataset

    cached = config.model_copy(deep=True)
    cached.data.prepared_dir = str(tmp_path / "cache")
    for split in ("train", "val"):
        write_prepared_split(cached, split, prompt_only=False)
    shared = build_train_datasets(cached)
    assert all(isinstance(dataset, MaterializedDataset) for dataset in shared.values())
    cached.data.materialize_mb = 0  # never: stream from parquet on every pass
    streamed = build_train_datasets(cached)
    assert not any(isinstance(dataset, MaterializedDataset) for dataset in streamed.values())
    for split in ("train", "val"):
        codes = [sorted(d[split].to_pandas()["product_code"].tolist()) for d in (shared, streamed)]
        assert codes[0] == codes[1] and codes[0]


def test_data_prepare_command_writes_reconciled_splits_then_reuses_them(ray_local, catalog, tmp_path, capsys):
    from phi3v_ray.cli import main

    argv = ["data", "prepare", "--catalog", str(catalog.directory), "--splits", "val,test"]
    argv += ["--set", f"data.prepared_dir={tmp_path}"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "(ok)" in first and "MISMATCH" not in first
    entries = sorted(path.name for path in tmp_path.iterdir() if (path / "meta.json").is_file())
    assert [name.split("-")[0] for name in entries] == ["test", "val"]
    assert any(name.startswith("test-prompt-") for name in entries)
    assert main(argv) == 0
    assert capsys.readouterr().out.count("reused") == 2
