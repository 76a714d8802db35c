"""The sample generator: byte-identical per seed, the real dataset's schema, and pictures that carry the labels."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from phi3v_ray.data.schema import BURBERRY_COLUMNS, STATUS_OK
from phi3v_ray.data.synth import synth_catalog
from phi3v_ray.errors import DataError

# The real DBQ/Burberry.Product.prices.United.States parquet schema (field notes), written out independently.
REAL_SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("website_name", "competence_date", "country_code", "currency_code", "brand",
                                      "category1_code", "category2_code", "category3_code")]
    + [("product_code", pa.int64())]
    + [(name, pa.string()) for name in ("title", "itemurl", "imageurl")]
    + [(name, pa.float64()) for name in ("full_price", "price", "full_price_eur", "price_eur")]
    + [("flg_discount", pa.int64())]
)  # fmt: skip


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 520-row sample: big enough for a held-out classifier, small enough to draw in a few seconds."""
    return synth_catalog(tmp_path_factory.mktemp("synth") / "sample", 520, seed=7, broken_url_share=0.05)


def test_same_seed_gives_byte_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    first = tree_digest(synth_catalog(tmp_path / "a", 40, seed=3))
    second = tree_digest(synth_catalog(tmp_path / "b", 40, seed=3))
    other = tree_digest(synth_catalog(tmp_path / "c", 40, seed=4))
    assert first == second
    assert len(first) > 30
    assert first["catalog.parquet"] != other["catalog.parquet"]


def test_catalog_schema_and_dtypes_equal_the_real_dataset(sample_dir: Path) -> None:
    schema = pq.read_schema(sample_dir / "catalog.parquet")
    assert list(BURBERRY_COLUMNS) == REAL_SCHEMA.names
    assert pa.schema([schema.field(name) for name in REAL_SCHEMA.names]).equals(REAL_SCHEMA)
    assert schema.names == REAL_SCHEMA.names + ["local_image_path"]
    frame = pd.read_parquet(sample_dir / "catalog.parquet")
    assert frame["product_code"].dtype == np.int64 and frame["full_price"].dtype == np.float64
    assert frame["product_code"].between(34_000_000, 81_000_000).all() and frame["product_code"].is_unique
    assert set(frame["category1_code"]) == {"WOMAN", "MAN", "KIDS"}
    assert (frame["flg_discount"] == 0).all() and (frame["brand"] == "BURBERRY").all()


def test_manifest_has_fetch_columns_and_broken_urls_are_listed_not_dropped(sample_dir: Path) -> None:
    catalog = pd.read_parquet(sample_dir / "catalog.parquet")
    manifest = pd.read_parquet(sample_dir / "manifest.parquet")
    assert manifest.columns.tolist() == list(BURBERRY_COLUMNS) + ["status", "local_image_path"]
    assert len(manifest) == len(catalog) == 520
    broken = manifest["status"] != STATUS_OK
    assert 5 <= broken.sum() <= 60
    assert manifest.loc[broken, "local_image_path"].isna().all()
    assert (manifest.loc[broken, "imageurl"].str.len() < 10).all()
    assert manifest.loc[broken, "status"].str.match(r"^(missing_url|bad_url): ").all()
    ok_paths = manifest.loc[~broken, "local_image_path"]
    assert all((sample_dir / path).is_file() for path in ok_paths)


def test_images_vary_in_size_shape_and_format_like_a_real_catalog(sample_dir: Path) -> None:
    paths = pd.read_parquet(sample_dir / "catalog.parquet")["local_image_path"].dropna()
    sizes, formats, modes = [], set(), set()
    for path in paths:
        with Image.open(sample_dir / path) as image:
            sizes.append(image.size)
            formats.add(image.format)
            modes.add(image.mode)
    widths, heights = np.array(sizes).T
    assert min(widths.min(), heights.min()) >= 225 and max(widths.max(), heights.max()) <= 1600
    assert np.maximum(widths, heights).min() >= 300
    portrait = (heights > widths).mean()
    assert 0.55 < portrait < 0.85 and (heights == widths).any() and (widths > heights).any()
    assert formats == {"JPEG", "PNG"} and "RGBA" in modes


def test_colourways_share_a_title_and_titles_move_price(sample_dir: Path) -> None:
    frame = pd.read_parquet(sample_dir / "catalog.parquet")
    shared = frame.groupby("title")["product_code"].nunique()
    assert (shared > 1).sum() >= 5
    cashmere = frame[frame["title"].str.contains("Cashmere")]["full_price"].median()
    cotton = frame[frame["title"].str.contains("Cotton")]["full_price"].median()
    assert cashmere > 1.4 * cotton
    assert (frame["full_price"] % 5 == 0).all()


def pixel_features(path: Path) -> np.ndarray:
    """24x24 grey-level distance from the backdrop (border median), scaled per image: a plain pixel feature."""
    with Image.open(path) as image:
        grey = np.asarray(image.convert("L").resize((24, 24), Image.Resampling.BILINEAR), dtype=np.float32)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    foreground = np.abs(grey - np.median(border))
    return (foreground / (foreground.max() + 1e-6)).ravel()


def test_nearest_centroid_on_pixels_predicts_category_far_above_majority(sample_dir: Path) -> None:
    frame = pd.read_parquet(sample_dir / "catalog.parquet").dropna(subset=["local_image_path"])
    features = np.stack([pixel_features(sample_dir / p) for p in frame["local_image_path"]])
    labels = frame["category3_code"].to_numpy()
    train = np.arange(len(frame)) % 4 != 0
    classes = sorted(set(labels[train]))
    centroids = np.stack([features[train & (labels == c)].mean(axis=0) for c in classes])
    distances = ((features[~train, None, :] - centroids[None]) ** 2).sum(axis=-1)
    predicted = np.array(classes)[distances.argmin(axis=1)]
    accuracy = (predicted == labels[~train]).mean()
    majority = pd.Series(labels[~train]).value_counts(normalize=True).iloc[0]
    print(f"nearest-centroid accuracy {accuracy:.2f} vs majority {majority:.2f}")
    assert accuracy > max(0.5, 4 * majority)


def test_refuses_to_overwrite_an_existing_catalog_without_being_asked(tmp_path: Path) -> None:
    synth_catalog(tmp_path, 3, seed=0)
    with pytest.raises(DataError, match="already holds a catalog"):
        synth_catalog(tmp_path, 3, seed=0)
    synth_catalog(tmp_path, 4, seed=0, overwrite=True)
    assert len(pd.read_parquet(tmp_path / "catalog.parquet")) == 4


# The tiny model's canvas is at most 112 px; a 1.5-px blur removes per-pixel grain, which a patch embedding (a linear
# map of 14x14 pixels) cannot tell from the colour. What is left is what the model can learn the material from.
MODEL_CANVAS_SIDE = 112
LEGIBLE_FINISH = 15.0  # grey levels; the old wool grain, cashmere grain and 1-px nylon seams measured 6-10


def test_every_material_leaves_a_mark_at_the_size_the_model_sees() -> None:
    """Material premiums move the price (up to 2.2x for cashmere), so each finish must survive the shrink to the
    model's canvas: the same product drawn in each material, plain, differs from its cotton twin after the blur."""
    import dataclasses

    from PIL import ImageFilter

    from phi3v_ray.data.synth import build_table
    from phi3v_ray.data.synth_images import draw_product
    from phi3v_ray.data.vocabulary import MATERIALS

    def look(spec, material: str) -> np.ndarray:
        twin = dataclasses.replace(spec, material=material, pattern="Plain")
        image = (
            draw_product(twin, max_side=MODEL_CANVAS_SIDE)
            .convert("RGB")
            .filter(ImageFilter.GaussianBlur(1.5))
        )
        return np.asarray(image, dtype=np.float32).mean(axis=2)

    _, specs = build_table(40, seed=3, broken_url_share=0.0)
    marks: dict[str, list[float]] = {material: [] for material in MATERIALS if material != "Cotton"}
    for spec in specs:
        cotton = look(spec, "Cotton")
        for material, found in marks.items():
            found.append(float(np.abs(look(spec, material) - cotton).max()))
    medians = {material: float(np.median(found)) for material, found in marks.items()}
    assert all(value >= LEGIBLE_FINISH for value in medians.values()), medians
