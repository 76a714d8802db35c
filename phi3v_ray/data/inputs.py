"""Checks of the paths a user gives the data commands, run before any work starts (and before Ray, which takes 8 s).

Each check names the flag or key the user typed and says what was found and what was expected: a file where a
directory belongs, a directory where a file belongs, a missing path, an empty or non-parquet file. Local paths and
object-store locations (s3://, gs://) are checked alike through phi3v_ray.storage.
"""

from __future__ import annotations

import os
from pathlib import Path

from phi3v_ray.errors import DataError
from phi3v_ray.storage import Location, is_uri, location, require_bucket


def check_directory_target(
    where: str | os.PathLike[str],
    label: str,
    expected: str = "a directory (or an s3:// prefix) to write into",
) -> None:
    """A DataError when a local output directory, or a folder above it, is a file (a bucket prefix always works)."""
    if is_uri(where):
        return
    out = Path(where).expanduser()
    for candidate in (out, *out.parents):
        if candidate.exists():
            if not candidate.is_dir():
                culprit = "is a file" if candidate == out else f"{candidate} is a file"
                raise DataError(f"{label} {where}: {culprit}; expected {expected}")
            return


def check_parquet_file(file: Location, *, hint: str) -> None:
    """A DataError unless `file` is a non-empty, readable parquet file; `hint` says how to make one."""
    if not file.is_file():
        if file.is_dir():
            raise DataError(f"{file}: is a directory; expected a parquet file ({hint})")
        require_bucket(file)
        raise DataError(f"{file}: not found; {hint}")
    if file.info().size == 0:
        raise DataError(f"{file}: is empty (0 bytes); expected a parquet file ({hint})")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pq.read_schema(file.path, filesystem=file.filesystem)
    except (pa.ArrowException, OSError, ValueError) as error:
        first_line = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise DataError(f"{file}: not a readable parquet file ({first_line}); {hint}") from None


def check_catalog_dir(where: str | os.PathLike[str] | Location, label: str) -> Location:
    """The catalog directory as a Location; a DataError when it is a file or (locally) does not exist."""
    directory = location(where)
    if directory.is_file():
        raise DataError(
            f"{label} {where}: is a file; expected a catalog directory (made by `phi3v-ray data synth`)"
        )
    if not directory.is_remote and not directory.is_dir():
        raise DataError(f"{label} {where}: no such directory; expected a catalog directory")
    return directory
