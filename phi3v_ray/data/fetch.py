"""Parallel, resumable image download on Ray: every input row ends in `manifest.parquet` with a status.

Image download is I/O-bound, so each Ray task runs a thread pool of HTTP requests (many requests in flight per
core) over its share of rows. Each request has connect/read timeouts, retries with exponential backoff only where a
retry can help (timeouts, connection errors, 5xx), a byte limit, and a full decode with PIL before the file is
written atomically under a name derived from the product code. A rerun finds verified files and skips them.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from phi3v_ray.data.schema import (
    BURBERRY_COLUMNS,
    MANIFEST_EXTRA_COLUMNS,
    STATUS_OK,
    manifest_arrow_schema,
    status_kind,
    validate_catalog,
)
from phi3v_ray.errors import DataError

MANIFEST_FILE = "manifest.parquet"
IMAGES_DIR = "images"
# Decoded format -> file extension; anything PIL decodes but is not listed keeps its lower-cased format name.
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}
TMP_MARKER = ".part-"
USER_AGENT = "phi3v-ray-fetch/0.1"


@dataclass(frozen=True)
class FetchOptions:
    """How patient and how parallel the download is; defaults suit a public CDN."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0
    retries: int = 3  # extra attempts after the first, only for timeouts, connection errors and 5xx
    backoff_s: float = 0.5  # wait backoff_s * 2**attempt between attempts
    max_bytes: int = 25 * 1024 * 1024
    threads_per_task: int = 16
    rows_per_task: int = 64
    task_cpus: float = 0.25


@dataclass
class FetchSummary:
    """What a fetch run did: outcome counts (by status kind), how many files were new and how many were reused."""

    manifest_path: Path
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
    """A catalog table from a parquet file, a CSV file or a Hugging Face dataset id (`train` split)."""
    path = Path(source)
    lower = source.lower()
    if lower.endswith((".parquet", ".csv")) or path.exists():
        if not path.is_file():
            raise DataError(
                f"{source}: no such file; expected a .parquet or .csv catalog or a hub dataset id"
            )
        try:
            if lower.endswith(".csv"):
                return pd.read_csv(path, dtype=str, keep_default_na=False)
            return pd.read_parquet(path)
        except (OSError, ValueError, pa.ArrowException) as error:
            raise DataError(f"{source}: cannot be read as a table ({error})") from error
    return _read_hub_dataset(source)


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

_thread_state = threading.local()


def _session():  # -> requests.Session, one per thread (Session is not documented as thread-safe)
    import requests

    session = getattr(_thread_state, "session", None)
    if session is None:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
        _thread_state.session = session
    return session


class _Rejected(Exception):
    """A response that will not become an image; the message is the row's status."""


class _Retryable(Exception):
    """A failure that may pass on another attempt; the message is the status if attempts run out."""


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
        raise _Rejected(f"not_an_image: got {looks}, expected an image") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise _Rejected(f"truncated_image: decoding failed ({str(error)[:80]})") from error
    return EXTENSIONS.get(image_format, image_format.lower() or "img")


def _is_read_timeout(error: Exception) -> bool:
    """Whether a requests error wraps urllib3's read timeout (raised while streaming the body)."""
    from urllib3.exceptions import ReadTimeoutError

    return any(isinstance(arg, ReadTimeoutError) for arg in error.args)


def _download(url: str, options: FetchOptions) -> bytes:
    """One GET with limits; raises _Rejected (final) or _Retryable (try again)."""
    import requests

    try:
        with _session().get(
            url,
            timeout=(options.connect_timeout_s, options.read_timeout_s),
            stream=True,
            allow_redirects=True,
        ) as response:
            if response.status_code >= 500:
                raise _Retryable(f"http_error: HTTP {response.status_code}")
            if response.status_code >= 400:
                raise _Rejected(f"http_error: HTTP {response.status_code}")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > options.max_bytes:
                raise _Rejected(f"too_large: {declared} bytes, expected at most {options.max_bytes}")
            body = bytearray()
            for chunk in response.iter_content(chunk_size=65536):
                body += chunk
                if len(body) > options.max_bytes:
                    raise _Rejected(f"too_large: over {options.max_bytes} bytes")
            return bytes(body)
    except requests.Timeout as error:
        raise _Retryable(f"timeout: no answer within {options.read_timeout_s:g}s") from error
    except requests.exceptions.ChunkedEncodingError as error:
        raise _Retryable("truncated_image: connection closed before the declared length") from error
    except requests.ConnectionError as error:
        if _is_read_timeout(error):  # a stall mid-body: requests reports it as a ConnectionError
            raise _Retryable(f"timeout: no data within {options.read_timeout_s:g}s") from error
        raise _Retryable(f"connection_error: {str(error)[:80]}") from error
    except requests.exceptions.InvalidURL as error:
        raise _Rejected(f"bad_url: {str(error)[:80]}") from error
    except requests.RequestException as error:
        raise _Rejected(f"request_error: {str(error)[:80]}") from error


def find_existing_image(images_dir: Path, stem: str) -> Path | None:
    """A previously written, fully decodable image for this stem (partial `.part-` files never count)."""
    for candidate in sorted(images_dir.glob(f"{stem}.*")):
        if TMP_MARKER in candidate.name or not candidate.is_file():
            continue
        try:
            _verify_image(candidate.read_bytes())
        except _Rejected:
            continue
        return candidate
    return None


def fetch_one(url: str, stem: str, images_dir: Path, options: FetchOptions) -> tuple[str, str | None, bool]:
    """Download, verify and store one image: (status, file name inside images_dir or None, newly downloaded)."""
    existing = find_existing_image(images_dir, stem)
    if existing is not None:
        return STATUS_OK, existing.name, False
    status = "timeout"
    for attempt in range(options.retries + 1):
        if attempt:
            time.sleep(options.backoff_s * 2 ** (attempt - 1))
        try:
            payload = _download(url, options)
            extension = _verify_image(payload)
        except _Rejected as rejection:
            return str(rejection), None, False
        except _Retryable as failure:
            status = f"{failure} (after {attempt + 1} attempts)"
            continue
        name = f"{stem}.{extension}"
        temporary = images_dir / f"{name}{TMP_MARKER}{os.getpid()}-{threading.get_ident()}"
        temporary.write_bytes(payload)
        os.replace(temporary, images_dir / name)  # readers never see a half-written image
        return STATUS_OK, name, True
    return status, None, False


def fetch_many(
    jobs: list[tuple[int, str, str]], images_dir: str, options: FetchOptions
) -> list[tuple[int, str, str | None, bool]]:
    """Fetch (row, url, stem) jobs with a thread pool; one result per job, in job order."""
    directory = Path(images_dir)
    with ThreadPoolExecutor(max_workers=max(1, options.threads_per_task)) as pool:
        results = pool.map(lambda job: fetch_one(job[1], job[2], directory, options), jobs)
        return [(job[0], *result) for job, result in zip(jobs, results, strict=True)]


# --- the whole catalog ---------------------------------------------------------------------------------------------


def _run_on_ray(
    jobs: list[tuple[int, str, str]], images_dir: Path, options: FetchOptions, advance: Callable[[int], None]
) -> list[tuple[int, str, str | None, bool]]:
    """Spread the jobs over Ray tasks (each a thread pool) and collect results as tasks finish."""
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    remote_fetch = ray.remote(num_cpus=options.task_cpus, max_retries=2)(fetch_many)
    pending = [
        remote_fetch.remote(jobs[start : start + options.rows_per_task], str(images_dir), options)
        for start in range(0, len(jobs), options.rows_per_task)
    ]
    results: list[tuple[int, str, str | None, bool]] = []
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for batch in ray.get(done):
            results.extend(batch)
            advance(len(batch))
    return results


def remove_stale_partials(images_dir: Path) -> int:
    """Delete `.part-` files a killed run left behind; returns how many."""
    stale = [path for path in images_dir.glob(f"*{TMP_MARKER}*") if path.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def write_manifest(frame: pd.DataFrame, path: Path) -> None:
    """Write the manifest atomically with the fixed schema (17 columns, extra inputs, status, local path)."""
    extra = [c for c in frame.columns if c not in BURBERRY_COLUMNS and c not in MANIFEST_EXTRA_COLUMNS]
    schema = manifest_arrow_schema(extra)
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    temporary = path.with_name(path.name + TMP_MARKER + str(os.getpid()))
    pq.write_table(table, temporary)
    os.replace(temporary, path)


def fetch_catalog(
    source: str | pd.DataFrame,
    out_dir: str | os.PathLike,
    options: FetchOptions | None = None,
    *,
    use_ray: bool = True,
    show_progress: bool = True,
) -> FetchSummary:
    """Validate a catalog, download its images in parallel and write `<out>/manifest.parquet`; resumable.

    `source` is a parquet/CSV path, a hub dataset id, or a DataFrame. Every input row appears in the manifest in input
    order with `status` ("ok" or `kind: detail`) and `local_image_path` (relative to out_dir, null unless ok).
    """
    from tqdm import tqdm

    options = options or FetchOptions()
    source_name = "dataframe" if isinstance(source, pd.DataFrame) else str(source)
    table = source if isinstance(source, pd.DataFrame) else read_source(source)
    ok, rejects = validate_catalog(table, source=source_name)
    out = Path(out_dir)
    images_dir = out / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(images_dir)
    jobs = [
        (int(position), str(url).strip(), safe_file_stem(code))
        for position, url, code in zip(ok.index, ok["imageurl"], ok["product_code"], strict=True)
    ]
    with tqdm(total=len(jobs), desc="fetch images", unit="img", disable=not show_progress) as bar:
        if use_ray:
            results = _run_on_ray(jobs, images_dir, options, bar.update)
        else:
            results = fetch_many(jobs, str(images_dir), options)
            bar.update(len(results))
    manifest = pd.concat([ok, rejects]).sort_index()
    manifest["local_image_path"] = pd.array([None] * len(manifest), dtype="string")
    downloaded = reused = 0
    for position, status, name, is_new in results:
        manifest.at[position, "status"] = status
        if status == STATUS_OK:
            manifest.at[position, "local_image_path"] = f"{IMAGES_DIR}/{name}"
            downloaded += is_new
            reused += not is_new
    if len(manifest) != len(table):  # the promise of this module; fail loudly rather than lose rows
        raise RuntimeError(f"manifest has {len(manifest)} rows for {len(table)} input rows")
    manifest_path = out / MANIFEST_FILE
    write_manifest(manifest, manifest_path)
    outcomes = Counter(status_kind(status) for status in manifest["status"].tolist())
    return FetchSummary(manifest_path, len(manifest), dict(outcomes), downloaded, reused)
