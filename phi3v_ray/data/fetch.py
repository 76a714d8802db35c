"""Parallel, resumable image download on Ray: every input row ends in `manifest.parquet` with a status.

Image download is I/O-bound, so each Ray task runs a thread pool of HTTP requests (many requests in flight per
core) over its share of rows. Each request has connect/read timeouts, retries with exponential backoff only where a
retry can help (timeouts, connection errors, 5xx), a byte limit, an address guard (no metadata service, loopback or
private network unless allowed; see url_guard), and a full decode with PIL before the image is stored.

The output location is a local directory or an object-store prefix (s3://, gs://), reached through `storage` only:
Ray tasks on any node write images straight to `<out>/images/` (whole or not at all), and the manifest lands beside
them. A rerun lists what is already stored (one listing, not a request per row), verifies it and skips it.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from phi3v_ray.data.download import Rejected, Retryable, download
from phi3v_ray.data.schema import (
    BURBERRY_COLUMNS,
    MANIFEST_EXTRA_COLUMNS,
    STATUS_OK,
    manifest_arrow_schema,
    status_kind,
    validate_catalog,
)
from phi3v_ray.errors import DataError, StorageError
from phi3v_ray.storage import Location, is_uri, location

MANIFEST_FILE = "manifest.parquet"
IMAGES_DIR = "images"
# Decoded format -> file extension; anything PIL decodes but is not listed keeps its lower-cased format name.
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}
TMP_MARKER = ".part-"
Where = str | os.PathLike[str] | Location


@dataclass(frozen=True)
class FetchOptions:
    """How patient and how parallel the download is, and which hosts it may reach; defaults suit a public CDN."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0
    retries: int = 3  # extra attempts after the first, only for timeouts, connection errors and 5xx
    backoff_s: float = 0.5  # wait backoff_s * 2**attempt between attempts
    max_bytes: int = 25 * 1024 * 1024
    threads_per_task: int = 16
    rows_per_task: int = 64
    task_cpus: float = 0.25
    max_redirects: int = 5
    # Off by default: on a cloud node a catalog URL could reach the metadata service or internal hosts (SSRF).
    allow_private_addresses: bool = False


@dataclass
class FetchSummary:
    """What a fetch run did: outcome counts (by status kind), how many files were new and how many were reused."""

    manifest_path: Path | str  # a local path, or the manifest's URI in an object store
    total: int
    by_outcome: dict[str, int] = field(default_factory=dict)
    downloaded: int = 0
    reused: int = 0

    def lines(self) -> list[str]:
        """Human summary, one line per outcome, for the CLI."""
        rows = [
            f"{kind:<24} {count:>7}" for kind, count in sorted(self.by_outcome.items(), key=lambda kv: -kv[1])
        ]
        return [
            f"{self.total} rows -> {self.manifest_path}",
            *rows,
            f"new downloads {self.downloaded}, already on disk {self.reused}",
        ]


def safe_file_stem(product_code: object) -> str:
    """A file name stem from a product code that cannot escape the images dir (no separators, no leading dots)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", str(product_code)).strip("_")
    if not stem:
        raise DataError(f"product_code {product_code!r}: expected letters or digits to name its image file")
    return stem[:120]


def read_source(source: str) -> pd.DataFrame:
    """A catalog table from a parquet or CSV file (local or an object-store URI) or a Hugging Face dataset id."""
    path = Path(source)
    lower = source.lower()
    if is_uri(source) or lower.startswith("file://"):
        where = location(source)
        if not where.is_file():
            raise DataError(f"{source}: no such object; expected a .parquet or .csv catalog")
        return _read_table(BytesIO(where.read_bytes()), source)
    if lower.endswith((".parquet", ".csv")) or path.exists():
        if not path.is_file():
            raise DataError(
                f"{source}: no such file; expected a .parquet or .csv catalog or a hub dataset id"
            )
        return _read_table(path, source)
    return _read_hub_dataset(source)


def _read_table(handle: Path | BytesIO, source: str) -> pd.DataFrame:
    """Parse a CSV (every column as text, as typed in the file) or a parquet table."""
    try:
        if source.lower().endswith(".csv"):
            return pd.read_csv(handle, dtype=str, keep_default_na=False)
        return pd.read_parquet(handle)
    except (OSError, ValueError, pa.ArrowException) as error:
        raise DataError(f"{source}: cannot be read as a table ({error})") from error


def _read_hub_dataset(dataset_id: str) -> pd.DataFrame:
    """The `train` split of a hub dataset such as DBQ/Burberry.Product.prices.United.States (needs the `hub` extra)."""
    if dataset_id.count("/") != 1:
        raise DataError(
            f"{dataset_id}: not a file and not a hub dataset id; expected PATH.parquet, PATH.csv or OWNER/NAME"
        )
    try:
        import datasets
    except ImportError as error:
        raise DataError(f"{dataset_id}: reading hub datasets needs `pip install phi3v-ray[hub]`") from error
    return datasets.load_dataset(dataset_id, split="train").to_pandas()


# --- one image -----------------------------------------------------------------------------------------------------


def _verify_image(payload: bytes) -> str:
    """Decode the whole image (catches HTML, truncation and corruption); returns its extension."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(BytesIO(payload)) as image:
            image_format = image.format or ""
            # JPEG can decode at 1/8 scale: still reads every byte (truncation is caught) at a fraction of the CPU.
            image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except UnidentifiedImageError as error:
        start = payload[:40].decode("utf-8", "replace").strip().lower()
        looks = (
            "an HTML page"
            if start.startswith(("<!doctype", "<html", "<"))
            else f"{len(payload)} unknown bytes"
        )
        raise Rejected(f"not_an_image: got {looks}, expected an image") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise Rejected(f"truncated_image: decoding failed ({str(error)[:80]})") from error
    return EXTENSIONS.get(image_format, image_format.lower() or "img")


def scan_images(images: Location) -> tuple[list[Location], dict[str, list[str]]]:
    """One listing of the images dir: (partial files a killed run left, stem -> names of non-empty stored files)."""
    partials: list[Location] = []
    by_stem: dict[str, list[str]] = defaultdict(list)
    for where, info in images.files():
        if TMP_MARKER in where.name:
            partials.append(where)
        elif "." in where.name and info.size:
            by_stem[where.name.split(".", 1)[0]].append(where.name)
    return partials, dict(by_stem)


def existing_image_name(images: Location, stem: str, candidates: list[str] | None = None) -> str | None:
    """The name of a stored, fully decodable image for this stem; `candidates` (from one listing) or a listing."""
    names = scan_images(images)[1].get(stem, []) if candidates is None else candidates
    for name in sorted(names):
        try:
            _verify_image(images.join(name).read_bytes())
        except (Rejected, StorageError):
            continue
        return name
    return None


def find_existing_image(images_dir: Path, stem: str) -> Path | None:
    """A previously written, fully decodable image for this stem in a local dir (partial files never count)."""
    name = existing_image_name(location(images_dir), stem)
    return None if name is None else Path(images_dir) / name


def fetch_one(
    url: str, stem: str, images_dir: Where, options: FetchOptions, candidates: list[str] | None = None
) -> tuple[str, str | None, bool]:
    """Download, verify and store one image: (status, file name inside images_dir or None, newly downloaded)."""
    images = location(images_dir)
    existing = existing_image_name(images, stem, candidates)
    if existing is not None:
        return STATUS_OK, existing, False
    status = "timeout"
    for attempt in range(options.retries + 1):
        if attempt:
            time.sleep(options.backoff_s * 2 ** (attempt - 1))
        try:
            payload = download(url, options)
            extension = _verify_image(payload)
        except Rejected as rejection:
            return str(rejection), None, False
        except Retryable as failure:
            status = f"{failure} (after {attempt + 1} attempts)"
            continue
        name = f"{stem}.{extension}"
        try:
            images.join(name).write_bytes(payload)  # readers never see a half-written image
        except StorageError as error:
            return f"storage_error: {str(error)[:160]}", None, False
        return STATUS_OK, name, True
    return status, None, False


def fetch_many(
    jobs: list[tuple[int, str, str]],
    images_dir: Where,
    options: FetchOptions,
    stored: dict[str, list[str]] | None = None,
) -> list[tuple[int, str, str | None, bool]]:
    """Fetch (row, url, stem) jobs with a thread pool; one result per job, in job order.

    `stored` (stem -> names, from the caller's one listing) spares a listing here; without it this lists once."""
    images = location(images_dir)
    known = scan_images(images)[1] if stored is None else stored
    with ThreadPoolExecutor(max_workers=max(1, options.threads_per_task)) as pool:
        results = pool.map(
            lambda job: fetch_one(job[1], job[2], images, options, known.get(job[2], [])), jobs
        )
        return [(job[0], *result) for job, result in zip(jobs, results, strict=True)]


# --- the whole catalog ---------------------------------------------------------------------------------------------


def _run_on_ray(
    jobs: list[tuple[int, str, str]],
    images: Location,
    stored: dict[str, list[str]],
    options: FetchOptions,
    advance: Callable[[int], None],
) -> list[tuple[int, str, str | None, bool]]:
    """Spread the jobs over Ray tasks (each a thread pool) and collect results as tasks finish.

    Tasks get the URI (each node builds its own filesystem from its environment) and their share of the listing."""
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    remote_fetch = ray.remote(num_cpus=options.task_cpus, max_retries=2)(fetch_many)
    pending = []
    for start in range(0, len(jobs), options.rows_per_task):
        batch = jobs[start : start + options.rows_per_task]
        known = {stem: stored[stem] for _, _, stem in batch if stem in stored}
        pending.append(remote_fetch.remote(batch, images.uri, options, known))
    results: list[tuple[int, str, str | None, bool]] = []
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for batch_results in ray.get(done):
            results.extend(batch_results)
            advance(len(batch_results))
    return results


def remove_stale_partials(images_dir: Where) -> int:
    """Delete `.part-` files a killed run left behind; returns how many."""
    partials, _ = scan_images(location(images_dir))
    for where in partials:
        where.delete()
    return len(partials)


def write_manifest(frame: pd.DataFrame, path: Where) -> None:
    """Write the manifest whole, with the fixed schema (17 columns, extra inputs, status, image path)."""
    extra = [c for c in frame.columns if c not in BURBERRY_COLUMNS and c not in MANIFEST_EXTRA_COLUMNS]
    schema = manifest_arrow_schema(extra)
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    location(path).write_bytes(sink.getvalue().to_pybytes())


def _assemble_manifest(
    ok: pd.DataFrame, rejects: pd.DataFrame, results: list[tuple[int, str, str | None, bool]]
) -> tuple[pd.DataFrame, int, int]:
    """Every input row in input order with its status and image path; (manifest, downloaded, reused)."""
    manifest = pd.concat([ok, rejects]).sort_index()
    manifest["local_image_path"] = pd.array([None] * len(manifest), dtype="string")
    downloaded = reused = 0
    for position, status, name, is_new in results:
        manifest.at[position, "status"] = status
        if status == STATUS_OK:
            manifest.at[position, "local_image_path"] = f"{IMAGES_DIR}/{name}"
            downloaded += is_new
            reused += not is_new
    return manifest, downloaded, reused


def refuse_other_catalog(out: Location, valid_rows: pd.DataFrame) -> None:
    """Stop before any download when `out` already holds the manifest of a different catalog.

    A rerun of the same catalog (or of an updated one that keeps most products) resumes; a prefix whose manifest
    shares fewer than half its products with this input belongs to another catalog, and fetching over it would mix
    two catalogs' images under one manifest.
    """
    manifest = out.join(MANIFEST_FILE)
    if not manifest.is_file():
        return
    try:
        held = pq.read_table(BytesIO(manifest.read_bytes()), columns=["product_code"]).column(0).to_pylist()
    except (pa.ArrowInvalid, KeyError, OSError) as error:
        raise DataError(
            f"{manifest.uri}: exists but is not a readable manifest ({error}); delete it first"
        ) from None
    held_codes = {str(code) for code in held if code is not None}
    if not held_codes:
        return
    shared = len(held_codes & {str(code) for code in valid_rows["product_code"].tolist()})
    if shared * 2 < len(held_codes):
        raise DataError(
            f"{out.uri}: already holds another catalog ({MANIFEST_FILE} lists {len(held_codes)} products, {shared} "
            "of them in this input); fetch into a new --out, or delete that folder or prefix first"
        )


def fetch_catalog(
    source: str | pd.DataFrame,
    out_dir: Where,
    options: FetchOptions | None = None,
    *,
    use_ray: bool = True,
    show_progress: bool = True,
) -> FetchSummary:
    """Validate a catalog, download its images in parallel and write `<out>/manifest.parquet`; resumable.

    `source` is a parquet/CSV path or URI, a hub dataset id, or a DataFrame; `out_dir` a local dir or a URI. Every
    input row appears in the manifest in input order with `status` ("ok" or `kind: detail`) and `local_image_path`
    (relative to out_dir, null unless ok).
    """
    from tqdm import tqdm

    options = options or FetchOptions()
    out = location(out_dir)  # a misspelled location fails here, before the catalog is even read
    source_name = "dataframe" if isinstance(source, pd.DataFrame) else str(source)
    table = source if isinstance(source, pd.DataFrame) else read_source(source)
    ok, rejects = validate_catalog(table, source=source_name)
    refuse_other_catalog(out, ok)
    images = out.join(IMAGES_DIR)
    images.make_dirs()  # in a bucket: a missing bucket or denied write fails here, before any download
    partials, stored = scan_images(images)
    for where in partials:
        where.delete()
    jobs = [
        (int(position), str(url).strip(), safe_file_stem(code))
        for position, url, code in zip(ok.index, ok["imageurl"], ok["product_code"], strict=True)
    ]
    with tqdm(total=len(jobs), desc="fetch images", unit="img", disable=not show_progress) as bar:
        if use_ray:
            results = _run_on_ray(jobs, images, stored, options, bar.update)
        else:
            results = fetch_many(jobs, images, options, stored)
            bar.update(len(results))
    manifest, downloaded, reused = _assemble_manifest(ok, rejects, results)
    if len(manifest) != len(table):  # the promise of this module; fail loudly rather than lose rows
        raise RuntimeError(f"manifest has {len(manifest)} rows for {len(table)} input rows")
    manifest_location = out.join(MANIFEST_FILE)
    write_manifest(manifest, manifest_location)
    outcomes = Counter(status_kind(status) for status in manifest["status"].tolist())
    shown = manifest_location.uri if manifest_location.is_remote else Path(manifest_location.path)
    return FetchSummary(shown, len(manifest), dict(outcomes), downloaded, reused)
