"""Where things are on disk: the names of the files the driver, the trials, `report` and `predict` all read.

A leaf module (no project imports), so the scheduler, the trainable, `report` and `predict` share these names
without importing one another.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

MARKER = "tune_main7.json"  # written into our experiment folders, so --resume can tell ours from others
TRIAL_META = "trial_meta.json"  # written into every checkpoint: what predict needs to rebuild the model
STOPPED_EARLY = "stopped_early.json"  # written into a trial's folder when a search's ASHA stops it early
DRIVER_RECORD = "tune_main7-driver.json"  # while a run (or resume) drives the experiment: its pid and host


def is_uri(path: Path | str) -> bool:
    """s3://..., gs://..., file://...: storage that Tune reaches through pyarrow.fs, not a local path."""
    return "://" in str(path)


def storage_location(path: Path | str) -> str:
    """What RunConfig(storage_path=...) gets: a URI untouched, a local path made absolute."""
    return str(path) if is_uri(path) else str(Path(path).resolve())


def read_marker(experiment_dir: Path | str) -> dict[str, Any] | None:
    """The experiment's MARKER (what the run started with), or None for a folder that isn't ours."""
    if is_uri(experiment_dir):
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(str(experiment_dir))
        marker = f"{path.rstrip('/')}/{MARKER}"
        if fs.get_file_info(marker).type != pyarrow.fs.FileType.File:
            return None
        with fs.open_input_stream(marker) as stream:
            return json.loads(stream.read().decode())
    marker = Path(experiment_dir) / MARKER
    return json.loads(marker.read_text()) if marker.exists() else None


def stopped_early(trial_dir: Path | str | None) -> dict[str, Any] | None:
    """A search trial's STOPPED_EARLY record, {} when unreadable, None when ASHA did not stop it."""
    if not trial_dir:
        return None
    path = Path(trial_dir) / STOPPED_EARLY
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return {}


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` whole (written beside it, then renamed): a reader or a kill never sees half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def result_rows(trial_dir: Path | str) -> list[dict[str, Any]]:
    """The whole rows of a trial's result.json, in order (a line being written, or cut by a kill, is skipped)."""
    path = Path(trial_dir) / "result.json"
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else ():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows
