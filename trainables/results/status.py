"""Each trial's real status, and whether a run is still writing an experiment.

Tune saves its experiment state every few seconds and loads a trial saved RUNNING as PENDING. A trial whose worker
died (a kill, the OOM killer) can be saved RUNNING just before Tune marks it ERROR, with no later save: Tune's
own console and our live summary (trainables.results.summaries, rewritten with Tune's final statuses when the
experiment ends) say ERROR, while `ExperimentAnalysis` reads PENDING. `correct_statuses` puts the summary's final
status back; a trial saved RUNNING by a run that is still going is shown RUNNING.

Whether a run is going: the driver writes DRIVER_RECORD (pid, host, start) into the experiment folder when it
starts and removes it when it ends; a record whose process is gone is a run that died (SIGKILL, reboot).
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

from trainables.layout import DRIVER_RECORD, is_uri, write_atomically

FINAL = ("ERROR", "TERMINATED")


def _process_started(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None when there is no such process."""
    try:
        import psutil
    except ImportError:  # psutil comes with Ray; without it, only whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def write_driver_record(experiment_dir: Path | str, command: str) -> None:
    """Say that this process is running `experiment_dir` (a local folder; a URI gets no record)."""
    if is_uri(experiment_dir):
        return
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "started": datetime.now().isoformat(timespec="seconds"), "process_started": _process_started(os.getpid())}
    write_atomically(Path(experiment_dir) / DRIVER_RECORD, json.dumps(record, indent=1))


def remove_driver_record(experiment_dir: Path | str) -> None:
    """The run is over (finished, stopped or failed): remove this process's record, never another's."""
    if is_uri(experiment_dir):
        return
    path = Path(experiment_dir) / DRIVER_RECORD
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def running_driver(experiment_dir: Path | str) -> dict[str, Any] | None:
    """The record of the run still writing `experiment_dir`, or None when none is (no record, or its process is
    gone). A record from another host can't be checked from here: it is returned with "unchecked": True."""
    if is_uri(experiment_dir):
        return None
    try:
        record = json.loads((Path(experiment_dir) / DRIVER_RECORD).read_text())
        pid = int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if record.get("host") != socket.gethostname():
        return {**record, "unchecked": True}
    started = _process_started(pid)
    recorded = record.get("process_started")
    if started is None or (recorded and started and abs(started - float(recorded)) > 2):  # gone, or a reused pid
        return None
    return record


def describe_driver(record: dict[str, Any]) -> str:
    where = f"on {record.get('host')}, which can't be checked from here" if record.get("unchecked") else "on this machine"
    return f"`{record.get('command', 'run')}` started {record.get('started', '?')} (pid {record.get('pid')} {where})"


def latest_summary(experiment_dir: Path | str) -> dict[str, Any] | None:
    """The newest run's live summary (summary_<timestamp>/experiment_summary.json), or None when it has none yet."""
    folders = sorted(Path(experiment_dir).glob("summary_*"))
    if not folders:
        return None
    try:
        return json.loads((folders[-1] / "experiment_summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the newest run has not written one yet (a resume that just began): none of the older ones apply


def correct_statuses(experiment_dir: Path | str, trials: list) -> None:
    """Set each loaded trial's status (`trial.set_status`) to what really happened: Tune's PENDING for a trial the
    live summary saw end (ERROR, or TERMINATED) becomes that; PENDING for a trial running under a live run, RUNNING."""
    summary = latest_summary(experiment_dir)
    if not summary:
        return
    recorded = {row.get("trial_id"): row.get("status") for row in summary.get("trials", [])}
    live = running_driver(experiment_dir) is not None
    for trial in trials:
        if trial.status != "PENDING":
            continue
        status = {"STOPPED_EARLY": "TERMINATED"}.get(recorded.get(trial.trial_id), recorded.get(trial.trial_id))
        if status in FINAL or (status == "RUNNING" and live):
            trial.set_status(status)


def error_line(error_file: Path | str | None) -> str | None:
    """The last line of a trial's error.txt (Tune writes one into the trial's folder when it fails), or None."""
    try:
        lines = [l for l in Path(error_file).read_text(errors="replace").splitlines() if l.strip()]
    except (OSError, TypeError):
        return None
    return lines[-1].strip()[:300] if lines else None
