"""One filesystem layer for every location a user gives: a local path, or an object-store URI (s3://, gs://).

Ray Data and Ray Train already speak `pyarrow.fs`, so this module resolves a location to a pyarrow filesystem plus a
path in it, and every stage reads and writes through that pair: there is no per-scheme code path elsewhere. The S3
endpoint (MinIO, R2, an on-prem store, or the tests' loopback emulator) and the credentials come only from the
environment or the instance profile: `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, `AWS_REGION`, and the usual AWS
credential chain. pyarrow itself does not read the endpoint variables, so they are applied here.

Writes are whole or absent: a local file is written to a temporary name and renamed; an object-store object appears
only when its single upload completes.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.fs as pafs

from phi3v_ray.errors import StorageError

REMOTE_SCHEMES = ("s3", "gs", "gcs")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")


def is_uri(location: str | os.PathLike[str]) -> bool:
    """True for an object-store URI (s3://, gs://); False for a local path (file:/// included)."""
    match = _SCHEME.match(str(location))
    return bool(match) and match.group(1).lower() in REMOTE_SCHEMES


@functools.lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    options: dict[str, Any] = {}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        options["endpoint_override"] = host if host else endpoint
        options["scheme"] = scheme if host else "https"
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options)


def s3_filesystem() -> pafs.S3FileSystem:
    """The S3 filesystem this process's environment describes (endpoint override and region from the environment)."""
    endpoint = next((os.environ[name] for name in ENDPOINT_VARIABLES if os.environ.get(name)), None)
    region = next((os.environ[name] for name in REGION_VARIABLES if os.environ.get(name)), None)
    return _s3_filesystem(endpoint, region)


@dataclass(frozen=True)
class Location:
    """A place in storage: the filesystem, the path inside it, and the URI or absolute path a person reads."""

    filesystem: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_remote(self) -> bool:
        """True when this lives in an object store (no local disk involved)."""
        return not isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        """The last path component."""
        return PurePosixPath(self.path).name

    def join(self, *parts: str) -> Location:
        """A location below this one (parts use `/`)."""
        suffix = "/".join(part.strip("/") for part in parts if part)
        if not suffix:
            return self
        return Location(
            self.filesystem, f"{self.path.rstrip('/')}/{suffix}", f"{self.uri.rstrip('/')}/{suffix}"
        )

    @property
    def parent(self) -> Location:
        """The location one level up."""
        path = str(PurePosixPath(self.path).parent)
        uri = self.uri[: len(self.uri) - len(self.name)].rstrip("/") or self.uri
        return Location(self.filesystem, path, uri)

    def info(self) -> pafs.FileInfo:
        """Type, size and mtime of what is here (type NotFound when nothing)."""
        return _call(self, lambda: self.filesystem.get_file_info(self.path))

    def exists(self) -> bool:
        """True when a file or directory (or, in an object store, an object or a non-empty prefix) is here."""
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        """True when a file (object) is here."""
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        """True when a directory (a prefix with objects below it) is here."""
        return self.info().type == pafs.FileType.Directory

    def list(self, *, recursive: bool = False) -> list[pafs.FileInfo]:
        """What is below this location (empty when nothing is), sorted by path."""
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=recursive)
        return sorted(
            _call(self, lambda: self.filesystem.get_file_info(selector)), key=lambda info: info.path
        )

    def files(self, *, recursive: bool = False) -> Iterator[tuple[Location, pafs.FileInfo]]:
        """(location, info) of every file below this location."""
        prefix = self.path.rstrip("/") + "/"
        for info in self.list(recursive=recursive):
            if info.type == pafs.FileType.File:
                yield self.join(info.path[len(prefix) :]), info

    def make_dirs(self) -> None:
        """Create the directory (a no-op in object stores, where prefixes need no creating)."""
        _call(self, lambda: self.filesystem.create_dir(self.path, recursive=True))

    def read_bytes(self) -> bytes:
        """The whole file."""
        with _call(self, lambda: self.filesystem.open_input_stream(self.path)) as stream:
            return stream.readall()

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file so that readers see either nothing or every byte (never a partial file)."""
        if self.is_remote:  # one PUT: the object appears only once the upload completed
            with _call(self, lambda: self.filesystem.open_output_stream(self.path)) as stream:
                stream.write(data)
            return
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.part-{uuid.uuid4().hex[:8]}")
        try:
            partial.write_bytes(data)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)

    def read_text(self) -> str:
        """The whole file as UTF-8 text."""
        return self.read_bytes().decode("utf-8")

    def write_text(self, text: str) -> None:
        """Write UTF-8 text whole (see write_bytes)."""
        self.write_bytes(text.encode("utf-8"))

    def delete(self) -> None:
        """Remove the file or directory tree here (nothing happens when nothing is here)."""
        kind = self.info().type
        if kind == pafs.FileType.Directory:
            _call(self, lambda: self.filesystem.delete_dir(self.path))
        elif kind == pafs.FileType.File:
            _call(self, lambda: self.filesystem.delete_file(self.path))

    def __str__(self) -> str:
        return self.uri


def location(where: str | os.PathLike[str] | Location) -> Location:
    """Resolve a local path, a `file:///` URI or an object-store URI to a Location; bad spellings are StorageErrors."""
    if isinstance(where, Location):
        return where
    text = os.fspath(where)
    match = _SCHEME.match(text)
    if match is None:
        absolute = str(Path(text).expanduser().resolve())
        return Location(pafs.LocalFileSystem(), absolute, absolute)
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "file":
        if not rest.startswith("/"):
            host = rest.split("/", 1)[0]
            raise StorageError(
                f"{text}: a file URI needs three slashes and an absolute path (file:///data/x); this one names host "
                f"{host!r}. For a local folder write a plain path instead"
            )
        return location(rest)
    if scheme not in REMOTE_SCHEMES:
        raise StorageError(
            f"{text}: unsupported scheme {scheme!r}; use a local path, s3://bucket/prefix or gs://bucket/prefix"
        )
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{text}: no bucket name after {scheme}://")
    path = f"{bucket}/{key.strip('/')}".rstrip("/")
    uri = f"{scheme}://{path}"
    if scheme == "s3":
        return Location(s3_filesystem(), path, uri)
    filesystem, _ = _call_uri(uri, lambda: pafs.FileSystem.from_uri(uri))
    return Location(filesystem, path, uri)


# ---- errors a person can act on -----------------------------------------------------------------------------------

_KNOWN_PROBLEMS = (
    (
        ("NO_SUCH_BUCKET", "NoSuchBucket", "bucket does not exist", "To create buckets, enable"),
        "bucket {bucket!r} does not exist (check the name, or create it)",
    ),
    (
        ("ACCESS_DENIED", "AccessDenied", "HTTP status 403", "InvalidAccessKeyId", "SignatureDoesNotMatch"),
        "access denied: the credentials in use may not read or write here (check the IAM policy or instance profile)",
    ),
    (
        ("credentials", "NETWORK_CONNECTION", "EC2 metadata", "Unable to connect to endpoint"),
        "no usable credentials or endpoint: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or attach an instance "
        "profile), and AWS_ENDPOINT_URL for an S3-compatible store",
    ),
)


def explain(error: BaseException, uri: str) -> StorageError:
    """A StorageError naming the URI and what is wrong, for an error pyarrow raised while touching it."""
    text = str(error)
    bucket = uri.split("://", 1)[-1].split("/", 1)[0]
    for markers, message in _KNOWN_PROBLEMS:
        if any(marker.lower() in text.lower() for marker in markers):
            return StorageError(f"{uri}: {message.format(bucket=bucket)} ({text.splitlines()[0][:200]})")
    return StorageError(f"{uri}: {type(error).__name__}: {text.splitlines()[0][:300] if text else ''}")


def _call(where: Location, action: Any) -> Any:
    try:
        return action()
    except FileNotFoundError as error:
        if where.is_remote:
            raise explain(error, where.uri) from None
        raise StorageError(f"{where.uri}: no such file or directory") from None
    except OSError as error:
        if where.is_remote:
            raise explain(error, where.uri) from None
        raise StorageError(f"{where.uri}: {error.strerror or error}") from None


def _call_uri(uri: str, action: Any) -> Any:
    try:
        return action()
    except OSError as error:
        raise explain(error, uri) from None


# ---- whole folders between a local disk and a location (tools that only write local files: W&B, plots) ----------


def upload_tree(
    local_dir: str | os.PathLike[str], target: str | Location, *, skip_same_size: bool = False
) -> int:
    """Copy every regular file below `local_dir` to the same relative path below `target`; returns how many.

    For programs that can only write to a local disk (W&B's offline writer, matplotlib): they write locally and the
    result is mirrored. `skip_same_size` skips files the target already holds with the same size (a re-mirror of an
    append-only folder). Symlinks are not followed: they point at local files that mean nothing elsewhere.
    """
    root, destination = Path(local_dir), location(target)
    present = {}
    if skip_same_size:
        prefix = destination.path.rstrip("/") + "/"
        present = {info.path[len(prefix) :]: info.size for info in destination.list(recursive=True)}
    copied = 0
    for file in sorted(root.rglob("*")):
        if file.is_symlink() or not file.is_file():
            continue
        relative = file.relative_to(root).as_posix()
        data = file.read_bytes()
        if skip_same_size and present.get(relative) == len(data):
            continue
        destination.join(relative).write_bytes(data)
        copied += 1
    return copied


def download_tree(
    source: str | Location, local_dir: str | os.PathLike[str], *, skip: tuple[str, ...] = ()
) -> int:
    """Copy every file below `source` into `local_dir` (same relative paths), except those below a folder named in
    `skip`; files already there with the same size are kept. Returns how many were copied."""
    origin, root = location(source), Path(local_dir)
    copied = 0
    for item, info in origin.files(recursive=True):
        relative = item.path[len(origin.path.rstrip("/")) + 1 :]
        if any(part in skip for part in relative.split("/")[:-1]):
            continue
        local = root / relative
        if local.is_file() and local.stat().st_size == info.size:
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f"{local.name}.part-{uuid.uuid4().hex[:8]}")
        try:
            partial.write_bytes(item.read_bytes())
            os.replace(partial, local)
        finally:
            partial.unlink(missing_ok=True)
        copied += 1
    return copied


def require_bucket(where: Location) -> None:
    """Raise a StorageError naming the URI when `where` lives in a bucket that does not exist (local: no-op).

    Reading a key of a missing bucket looks like a missing key to pyarrow (a HEAD answers 404 either way), so a stage
    about to say "nothing here" checks the bucket first and says the more useful thing.
    """
    if not where.is_remote:
        return
    bucket = where.path.split("/", 1)[0]
    if _call(where, lambda: where.filesystem.get_file_info(bucket)).type == pafs.FileType.NotFound:
        raise StorageError(f"{where.uri}: bucket {bucket!r} does not exist (check the name, or create it)")
