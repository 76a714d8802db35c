"""W&B run folders for a bucket: W&B writes only to a local disk, so a run directory that is a URI is staged locally.

A sweep on `run.storage_path: s3://...` asks for its W&B runs in `<sweep URI>/wandb`. W&B writes them to a local
staging folder named after that URI (the same name on every call on one node, so the trial's writer and the sweep
driver that seals it agree), and each run folder is copied to `<URI>/wandb/<run folder>` once it ends, so
`wandb sync` works from any machine that downloads it and nothing depends on the node that ran the trial.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from phi3v_ray.storage import is_uri, location, upload_tree

# In a local staging folder: the URI its runs are mirrored to.
MIRROR_FILE = ".phi3v-mirror-uri"


def local_run_directory(directory: str | os.PathLike[str]) -> Path:
    """Where W&B writes for `directory`: itself when local; for a URI, a local staging folder named after it."""
    text = os.fspath(directory)
    if not is_uri(text):
        return Path(text)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    staging = Path(tempfile.gettempdir()) / "phi3v-wandb" / digest
    staging.mkdir(parents=True, exist_ok=True)
    (staging / MIRROR_FILE).write_text(text)
    return staging


def mirror_run_folder(run_dir: Path) -> str | None:
    """Copy one run folder (`<staging>/wandb/<run folder>`) to its URI; returns that URI, None when local."""
    marker = run_dir.parent.parent / MIRROR_FILE
    if not marker.is_file():
        return None
    target = location(marker.read_text().strip()).join("wandb", run_dir.name)
    upload_tree(run_dir, target, skip_same_size=True)
    return target.uri
