"""Where preparation keeps things: a local folder stays a `Path`, an object-store prefix is a storage `Location`.

Local callers (and their tests) have always handled prepared entries and rejects folders as `Path`s, and keep doing
so; a URI has no local path, so it stays a `Location`. Both are read and written through phi3v_ray.storage (via
`location(place)`), so nothing below branches on the scheme: only on whether a folder can be renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path

from phi3v_ray.storage import Location, is_uri, location

Place = Path | Location


def place(where: str | os.PathLike[str] | Location) -> Place:
    """A local path (or file:/// URI) as a `Path`, unresolved as given; an object-store URI as a `Location`."""
    if isinstance(where, Location):
        return where if where.is_remote else Path(where.path)
    if isinstance(where, Path):
        return where
    text = os.fspath(where)
    if is_uri(text):
        return location(text)
    return Path(location(text).path) if "://" in text else Path(text)


def below(where: Place, *parts: str) -> Place:
    """The place `parts` below `where` (same kind as `where`)."""
    parts = tuple(part for part in parts if part)
    if isinstance(where, Path):
        return where.joinpath(*parts)
    return where.join(*parts)
