"""Live records of a running experiment, written as trials report and finish, so a crashed run still leaves
a true account: a Ray Tune callback (driver side) that keeps

  <experiment dir>/summary_<timestamp>/experiment_summary.json   every trial: status, best scores, settings
  <experiment dir>/summary_<timestamp>/experiment_summary.txt    the same as a table
  <experiment dir>/summary_<timestamp>/logs/<config name>.log    one line per reported evaluation, plus events

(the seed's bash script wrote per-experiment logs and an experiment_summary.txt). The rows come from
`trainables.results.report.summarize_results`, the function `report` uses on `ExperimentAnalysis`, so they agree.
A resumed run opens a new folder and, reading the trials' result.json, summarizes all of their results.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback, CLIReporter

from trainables.results.report import TABLE_COLUMNS, format_table, format_value, mode_of, number, summarize_results
from trainables.layout import result_rows, stopped_early, write_atomically
from trainables.results.status import error_line

if TYPE_CHECKING:
    from trainables.config import RunContext

LOG_COLUMNS = ("epoch", "step", "competition_score", "rouge1", "rouge2", "rougeL", "eval_loss", "train_loss",
               "elapsed_s", "peak_gpu_mem_gb")


class ExperimentSummaryCallback(Callback):
    def __init__(self, experiment_dir: str | Path, metric: str = "competition_score"):
        self.experiment_dir = str(experiment_dir)
        self.metric = metric
        self._reset()

    def _reset(self) -> None:
        self.summary_dir: Path | None = None
        self._results: dict[str, dict[int, dict[str, Any]]] = {}  # trial_id -> training_iteration -> result
        self._status: dict[str, str] = {}  # statuses known before trial.status is updated
        self._errors: dict[str, str] = {}

    def __getstate__(self):  # pickled with the Tuner: keep only the settings
        return {"experiment_dir": self.experiment_dir, "metric": self.metric}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    # -- Tune hooks -----------------------------------------------------------------------------------

    def setup(self, **info):
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.summary_dir = Path(self.experiment_dir) / f"summary_{stamp}"
        (self.summary_dir / "logs").mkdir(parents=True, exist_ok=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._status[trial.trial_id] = "RUNNING"
        self._log(trial, "started" if not self._results.get(trial.trial_id) else "restarted")
        self._write(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._status[trial.trial_id] = "RUNNING"
        self._history(trial)[int(result.get("training_iteration", len(self._history(trial)) + 1))] = dict(result)
        self._log(trial, "eval " + " ".join(f"{c}={format_value(result.get(c))}" for c in LOG_COLUMNS if c in result))
        self._write(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._status[trial.trial_id] = "TERMINATED"
        self._log(trial, "finished")
        self._write(trials)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._status[trial.trial_id] = "PENDING"
        self._log(trial, f"failed, will retry from its last checkpoint: {_error_line(trial)}")
        self._write(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._status[trial.trial_id] = "ERROR"
        self._errors[trial.trial_id] = _error_line(trial)
        self._log(trial, f"ERROR (no retries left): {self._errors[trial.trial_id]}")
        self._write(trials)

    def on_experiment_end(self, trials, **info):
        # Tune's statuses are final now, except on a stopped run (Ctrl-C, SIGTERM): its cleanup marks each trial it
        # stops TERMINATED without completing it, while its saved state has the trial RUNNING and --resume runs it
        # again. A trial still running here by our record is PENDING, not finished.
        self._status = {tid: "PENDING" for tid, status in self._status.items() if status in ("RUNNING", "PENDING")}
        self._write(trials)

    # -- records --------------------------------------------------------------------------------------

    def _history(self, trial) -> dict[int, dict[str, Any]]:
        if trial.trial_id not in self._results:  # first sight in this process: earlier results (a resume) on disk
            self._results[trial.trial_id] = _results_on_disk(trial)
        return self._results[trial.trial_id]

    def _log(self, trial, message: str) -> None:
        if self.summary_dir is None:
            self.setup()
        path = self.summary_dir / "logs" / f"{_name(trial)}.log"
        with path.open("a", encoding="utf-8") as f:
            f.write(f"{datetime.now():%Y-%m-%d %H:%M:%S} {trial.trial_id} {message}\n")

    def rows(self, trials) -> list[dict[str, Any]]:
        rows = []
        for trial in sorted(trials, key=_name):
            results = [r for _, r in sorted(self._history(trial).items())]
            status = self._status.get(trial.trial_id, trial.status)
            if status == "TERMINATED" and stopped_early(trial.path) is not None:
                status = "STOPPED_EARLY"  # a search's ASHA stopped it (trainables.driver.search); not an error
            row = {"name": _name(trial), "model": trial.config["experiment"].get("model", {}).get("checkpoint"),
                   "status": status, "trial_id": trial.trial_id,
                   **summarize_results(results, self.metric), "path": trial.path}
            if trial.trial_id in self._errors:
                row["error"] = self._errors[trial.trial_id]
            rows.append(row)
        return rows

    def _write(self, trials) -> None:
        if self.summary_dir is None:
            self.setup()
        rows = self.rows(trials)
        scored = [r for r in rows if number(r.get(self.metric)) is not None]
        best = None
        if scored:
            pick = min if mode_of(self.metric) == "min" else max
            best = pick(scored, key=lambda r: r[self.metric])
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        summary = {
            "experiment": Path(self.experiment_dir).name, "experiment_dir": self.experiment_dir,
            "updated": datetime.now().isoformat(timespec="seconds"), "metric": self.metric,
            "mode": mode_of(self.metric), "status_counts": counts,
            "best_trial": None if best is None else {"name": best["name"], "trial_id": best["trial_id"],
                                                     self.metric: best[self.metric], "epoch": best.get("best_epoch")},
            "trials": rows,
        }
        write_atomically(self.summary_dir / "experiment_summary.json", json.dumps(summary, ensure_ascii=False, indent=1))
        text = [f"Experiment {summary['experiment']} ({self.experiment_dir})", f"updated {summary['updated']}; "
                + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                f"best {self.metric} per trial, at best_epoch; scores are F1, competition_score = mean x 100", "",
                format_table(rows, TABLE_COLUMNS), ""]
        text.append("best trial: " + ("none yet" if best is None else
                                      f"{best['name']} ({best['trial_id']}) {self.metric}={format_value(best[self.metric])} "
                                      f"at epoch {format_value(best.get('best_epoch'))}"))
        text += [f"error in {r['name']}: {r['error']}" for r in rows if r.get("error")]
        write_atomically(self.summary_dir / "experiment_summary.txt", "\n".join(text) + "\n")


def _name(trial) -> str:
    return trial.config["experiment"]["name"]


def _error_line(trial) -> str:
    try:
        path = trial.error_file
    except AttributeError:  # a trial without an error file attribute
        path = None
    return error_line(path) or "see the trial's error.txt"


def _results_on_disk(trial) -> dict[int, dict[str, Any]]:
    try:
        trial_dir = Path(trial.path)
    except (AttributeError, TypeError):  # a trial not yet placed on storage has no path
        return {}
    return {int(r["training_iteration"]): r for r in result_rows(trial_dir) if "training_iteration" in r}


# ---------------------------------------------------------------------------------------------------
# What the driver hands to RunConfig: the live summary, the progress table, optional W&B

PROGRESS_METRICS = {"epoch": "epoch", "competition_score": "score", "rouge1": "R-1", "rouge2": "R-2",
                    "rougeL": "R-L", "eval_loss": "dev loss", "train_loss": "train loss"}
DEFAULT_WANDB_PROJECT = "dialogue-summarization-tune"


class TrialTable(CLIReporter):
    """Tune's CLIReporter with our "Current best trial" line: Ray's ranks the trials by their last result and
    shows that, so a trial past its best looked worse (or better) than it was; this one ranks by each trial's best
    `metric` so far (Tune's metric_analysis, the same number `report` shows). Ray's own line is off (no metric or
    mode given to it)."""

    def __init__(self, metric: str, **kwargs):
        super().__init__(**kwargs)
        self.best_metric = metric

    def report(self, trials, done: bool, *sys_info: str):
        super().report(trials, done, *sys_info, *best_trial_line(trials, self.best_metric))


def best_trial_line(trials, metric: str) -> list[str]:
    """["Current best trial: <trial> with best <metric>=<value> (last <value>)"], or [] while none has reported."""
    mode = mode_of(metric)
    scored = [(t, number((t.metric_analysis or {}).get(metric, {}).get(mode))) for t in trials]
    scored = [(t, v) for t, v in scored if v is not None]
    if not scored:
        return []
    trial, value = (min if mode == "min" else max)(scored, key=lambda s: s[1])
    last = number(trial.metric_analysis[metric].get("last"))
    return [f"Current best trial: {trial} with best {metric}={format_value(value)} (last {format_value(last)})"]


def progress_reporter(metric: str = "competition_score", searched: dict[str, str] | None = None):
    """Tune's trial table with the columns a person watches (and a search's sampled settings), and the best trial
    by `metric`. Ray's new output engine (the default) ignores a custom reporter: process.configure_cli sets
    RAY_AIR_NEW_OUTPUT=0 in the driver unless the user set it."""
    columns = {"experiment/name": "config",
               **{f"experiment/{key.replace('.', '/')}": key.split(".")[-1] for key in searched or {}}}
    return TrialTable(metric, metric_columns=dict(PROGRESS_METRICS), parameter_columns=columns,
                      max_report_frequency=30, sort_by_metric=False, max_progress_rows=20,
                      print_intermediate_tables=True, max_column_length=32)


def wandb_settings(run: "RunContext") -> dict[str, Any] | None:
    """W&B for this run, or None: `run.wandb` from --wandb, or TUNE_MAIN7_WANDB=1 in the environment."""
    wanted = run.wandb or os.environ.get("TUNE_MAIN7_WANDB", "").lower() in ("1", "true", "yes", "on")
    if not wanted:
        return None
    project = run.wandb_project or os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT
    # No key: offline (runs land on disk; `wandb sync <dir>` uploads them later). Never a crash for a missing key.
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return {"project": project, "mode": mode}


def run_callbacks(experiment_dir: str | Path, metric: str, run: "RunContext") -> list:
    """RunConfig(callbacks=...): the live summary always, W&B (one run per trial) when asked."""
    experiment_dir = str(experiment_dir)
    if experiment_dir.startswith("file://"):
        local_dir = experiment_dir[len("file://"):]
    elif "://" in experiment_dir:  # cloud storage: the summary stays on this machine, and says where
        local_dir = str((Path("logs") / experiment_dir.rstrip("/").rsplit("/", 1)[-1]).resolve())
        print(f"Storage is {experiment_dir}: the live summary and W&B files go to {local_dir} on this machine", flush=True)
    else:
        local_dir = experiment_dir
    callbacks: list = [ExperimentSummaryCallback(Path(local_dir).resolve(), metric)]
    experiment_dir = local_dir
    settings = wandb_settings(run)
    if settings:
        where = Path(experiment_dir) / "wandb"
        print(f"W&B: project {settings['project']}, {settings['mode']}, one run per trial, files in {where}"
              + ("; upload later with `wandb sync <run folder>`" if settings["mode"] == "offline" else ""), flush=True)
        from trainables.driver.wandb_logging import SafeWandbLoggerCallback  # imports wandb: only when asked

        callbacks.append(SafeWandbLoggerCallback(
            project=settings["project"], group=Path(experiment_dir).name, log_config=False,
            excludes=["eff_notes", "eff_unsloth_reason", "eff_model_source"],
            mode=settings["mode"], dir=str(experiment_dir),  # passed on to wandb.init in each trial's logger
        ))
    return callbacks



def print_results(experiment_dir: Path, metric: str | None = None, plots: bool = True) -> int:
    """What `report` and the end of a run print: a grid's result table (trainables.results.report), or a search's ranked
    trials and best sampled values (trainables.results.search_report). 0 when every trial finished, 1 otherwise."""
    from trainables.layout import read_marker
    from trainables.results.report import experiment_metric, load_analysis, print_summary

    marker = read_marker(experiment_dir) or {}
    if marker.get("kind") != "search":
        return print_summary(experiment_dir, metric, plots)
    from trainables.results.search_report import print_search_summary

    metric, _ = experiment_metric(experiment_dir, metric)
    return print_search_summary(experiment_dir, marker, metric, load_analysis(experiment_dir, metric), plots)
