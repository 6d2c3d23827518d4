"""Reading results with Ray Tune's own records (`tune.ExperimentAnalysis`): tables, plots and summaries.

Works on a finished, running or partly failed experiment (a trial with no result yet, or in ERROR, is still
listed); never imports the trainable. `summarize_results` turns one trial's reported results into its table
row, and is shared with the live summary callback (`trainables.results.summaries`), so the two always agree.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trainables.config import mode_of
from trainables.layout import MARKER, read_marker

SCORE_COLUMNS = ("competition_score", "rouge1", "rouge2", "rougeL")
EFFECTIVE_COLUMNS = ("eff_device", "eff_precision", "eff_load_in_4bit", "eff_lora", "eff_unsloth",
                     "eff_train_batch_size", "eff_gradient_accumulation_steps", "eff_model_source")
TABLE_COLUMNS = ["name", "model", "status", "evaluations", "best_epoch", *SCORE_COLUMNS, "eval_loss",
                 "train_time_s", "peak_gpu_mem_gb", "peak_host_mem_gb", "eff_precision", "eff_load_in_4bit",
                 "eff_lora", "eff_train_batch_size", "eff_gradient_accumulation_steps"]
# trainables.trial.telemetry's fields, summarized over a trial's reports: how to combine each one
TELEMETRY_SUMMARY = {"gpu_util_mean": "mean", "gpu_util_p10": "min", "gpu_mem_used_gb": "max", "gpu_power_w": "mean",
                     "train_samples_per_s": "mean", "train_label_tokens_per_s": "mean", "eval_s": "mean"}
TELEMETRY_COLUMNS = ["name", *TELEMETRY_SUMMARY]


def latest_experiment(storage_path: Path) -> Path | None:
    """The newest experiment folder of ours under `storage_path`."""
    storage_path = Path(storage_path)
    if not storage_path.is_dir():
        return None
    ours = [p for p in storage_path.iterdir() if p.is_dir() and (p / MARKER).exists()]
    return max(ours, key=lambda p: (p / MARKER).stat().st_mtime) if ours else None


def load_analysis(experiment_dir: Path, metric: str = "competition_score"):
    """Tune's ExperimentAnalysis, each trial's status corrected to what really happened (trainables.results.status:
    Tune reads a trial whose worker died as PENDING)."""
    from ray.tune import ExperimentAnalysis

    from trainables.results.status import correct_statuses

    analysis = ExperimentAnalysis(str(Path(experiment_dir).resolve()), default_metric=metric, default_mode=mode_of(metric))
    correct_statuses(experiment_dir, analysis.trials)
    return analysis


def number(value: Any) -> float | None:
    """A finite float, or None (missing, NaN, not a number)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _plain(value: Any) -> Any:
    """numpy scalars -> Python; NaN -> None (JSON-safe)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarize_results(results: list[dict[str, Any]], metric: str = "competition_score") -> dict[str, Any]:
    """One trial's row from its reported results (in order): the best evaluation by `metric` (its scores and
    epoch), train time and peak memory so far, and the effective settings of the last report."""
    row: dict[str, Any] = {"evaluations": len(results)}
    scored = [r for r in results if number(r.get(metric)) is not None]
    if scored:
        pick = min if mode_of(metric) == "min" else max
        best = pick(scored, key=lambda r: number(r[metric]))  # first of equals, like DataFrame.idxmax
        row["best_epoch"] = _plain(best.get("epoch"))
        row["best_iteration"] = _plain(best.get("training_iteration"))
        row["best_checkpoint_dir_name"] = _plain(best.get("checkpoint_dir_name"))  # in the trial's folder
        for column in (*SCORE_COLUMNS, "eval_loss"):
            row[column] = _plain(best.get(column))
    if results:
        last = results[-1]
        row["last_epoch"] = _plain(last.get("epoch"))
        row["train_time_s"] = _plain(last.get("elapsed_s"))
        for column in ("peak_gpu_mem_gb", "peak_host_mem_gb"):
            values = [v for v in (number(r.get(column)) for r in results) if v is not None]
            row[column] = max(values) if values else None
        for column in EFFECTIVE_COLUMNS:
            row[column] = _plain(last.get(column))
        for column, how in TELEMETRY_SUMMARY.items():  # absent GPU fields (a CPU trial) stay absent
            values = [v for v in (number(r.get(column)) for r in results) if v is not None]
            if values:
                row[column] = round({"mean": sum(values) / len(values), "min": min(values), "max": max(values)}[how], 3)
    return row


def frame_results(frame) -> list[dict[str, Any]]:
    if frame is None or len(frame) == 0:
        return []
    if "training_iteration" in frame:
        frame = frame.sort_values("training_iteration")
    return frame.to_dict("records")


def trial_rows(experiment_dir: Path, metric: str = "competition_score", analysis=None) -> list[dict[str, Any]]:
    """One row per trial (sorted by config name): its config name, model, status (a failed one's error line too),
    best scores and where."""
    from trainables.results.status import error_line

    analysis = analysis or load_analysis(experiment_dir, metric)
    frames = analysis.trial_dataframes
    rows = []
    for trial in sorted(analysis.trials, key=lambda t: t.config["experiment"]["name"]):
        exp = trial.config["experiment"]
        rows.append({
            "name": exp["name"], "model": exp["model"]["checkpoint"], "status": trial.status,
            "trial_id": trial.trial_id, **summarize_results(frame_results(frames.get(trial.trial_id)), metric),
        })
        if trial.status == "ERROR":
            rows[-1]["error"] = error_line(Path(trial.path) / "error.txt") or "see the trial's error.txt"
    return rows


def format_value(value: Any) -> str:
    """A table cell or log value: floats to 4 significant digits, None/NaN as '-'."""
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[format_value(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths))
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def best_trial(analysis, metric: str = "competition_score"):
    """(the best trial by its best `metric`, its results, a note or None); (None, [], None) while no trial has
    reported `metric`. A trial that failed (ERROR) is the best only when no other trial reported `metric`; a failed
    trial that scored higher is named in the note. Of equal scores, the first trial in Tune's order wins."""
    pick = min if mode_of(metric) == "min" else max
    scored = []  # (trial, its best value, its results)
    for trial in analysis.trials:
        results = frame_results(analysis.trial_dataframes.get(trial.trial_id))
        values = [v for v in (number(r.get(metric)) for r in results) if v is not None]
        if values:
            scored.append((trial, pick(values), results))
    if not scored:
        return None, [], None
    best, value, results = pick([s for s in scored if s[0].status != "ERROR"] or scored, key=lambda s: s[1])
    top, top_value, _ = pick(scored, key=lambda s: s[1])
    note = None
    if top is not best and top_value != value:
        note = (f"{top.config['experiment']['name']} ({top.trial_id}) scored {metric} {format_value(top_value)} but "
                f"ended {top.status}; the best trial that did not fail is used")
    return best, results, note


def best_trial_and_checkpoint(analysis, metric: str = "competition_score"):
    """(best trial (see best_trial), its best checkpoint on disk by `metric` or None, a note or None); (None, None,
    None) while no trial has reported `metric`. Only a checkpoint folder that exists is named: when the best
    evaluation's own checkpoint was not kept (Tune keeps them ranked by the run's metric), the note says so and
    names what is kept, and the best kept one is returned."""
    best, results, failed_note = best_trial(analysis, metric)
    if best is None:
        return None, None, None
    checkpoint, note = kept_checkpoint(Path(best.path), results, metric)
    return best, checkpoint, "; ".join(n for n in (failed_note, note) if n) or None


def failure_warning(trial) -> str | None:
    """One line for a trial that did not end well, naming it and its status (ERROR: its error line too), or None
    for a finished one. Whoever hands out such a trial's checkpoint prints it."""
    from trainables.results.status import error_line

    name = f"{trial.config['experiment']['name']} ({trial.trial_id})"
    if trial.status == "ERROR":
        error = error_line(Path(trial.path) / "error.txt") or "see its error.txt"
        return (f"trial {name} FAILED (status ERROR: {error}); its checkpoint is from before the failure, "
                "and the trial never finished its training")
    if trial.status not in ("TERMINATED",):
        return f"trial {name} has not finished (status {trial.status}); its checkpoint is its best so far"
    return None


def kept_checkpoint(trial_dir: Path, results: list[dict[str, Any]], metric: str) -> tuple[str | None, str | None]:
    """(the trial's best checkpoint folder by `metric` among those on disk, or None; a note when the best
    evaluation's checkpoint is not among them)."""
    kept = {p.name: p for p in Path(trial_dir).glob("checkpoint_*") if p.is_dir()}
    scored = [r for r in results if number(r.get(metric)) is not None and r.get("checkpoint_dir_name")]
    if not scored:
        return None, None
    pick = min if mode_of(metric) == "min" else max
    best_value = pick(number(r[metric]) for r in scored)
    best_rows = [r for r in scored if number(r[metric]) == best_value]  # Tune keeps one of equal scores
    best = next((r for r in reversed(best_rows) if r["checkpoint_dir_name"] in kept), best_rows[0])
    if best["checkpoint_dir_name"] in kept:
        return str(kept[best["checkpoint_dir_name"]]), None
    on_disk = [r for r in scored if r["checkpoint_dir_name"] in kept]
    names = ", ".join(f"{r['checkpoint_dir_name']} (epoch {format_value(_plain(r.get('epoch')))}, {metric} "
                      f"{format_value(number(r[metric]))})" for r in sorted(on_disk, key=lambda r: r["checkpoint_dir_name"]))
    note = (f"the best {metric} evaluation (epoch {format_value(_plain(best.get('epoch')))}, {best['checkpoint_dir_name']}) "
            f"was not kept: this run kept its checkpoints by another metric; kept: {names or 'none'}")
    if not on_disk:
        return None, note
    chosen = pick(on_disk, key=lambda r: number(r[metric]))
    return str(kept[chosen["checkpoint_dir_name"]]), note + f"; using {chosen['checkpoint_dir_name']}"


def experiment_metric(experiment_dir: Path, asked: str | None) -> tuple[str, str]:
    """(the metric report/predict rank by, and why): --metric when given, else the one the run used."""

    try:
        recorded = (read_marker(experiment_dir) or {}).get("metric")
    except (OSError, ValueError):
        recorded = None
    if asked:
        kept = f"; checkpoints were kept by {recorded}" if recorded and recorded != asked else ""
        return asked, f"--metric{kept}"
    if recorded:
        return recorded, "the metric this experiment ran with"
    return "competition_score", "the default"


# ---------------------------------------------------------------------------------------------------
# Plots


def pyplot():
    """matplotlib's pyplot on the Agg backend: the plots are files, written where there may be no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plot(fig, experiment_dir: Path, out_dir: Path | None, filename: str) -> Path:
    """Write `fig` as `filename` into `out_dir` (default `<experiment dir>/report/`), close it; returns the path."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir or Path(experiment_dir) / "report")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


CURVE_PANELS = {
    "rouge.png": [("competition_score", "competition score (mean ROUGE F1 x 100)"), ("rouge1", "ROUGE-1 F1"),
                  ("rouge2", "ROUGE-2 F1"), ("rougeL", "ROUGE-L F1")],
    "loss.png": [("train_loss", "training loss (last logged)"), ("eval_loss", "dev loss")],
}
CURVE_TITLES = {"rouge.png": "Dev ROUGE per epoch", "loss.png": "Loss per epoch"}


def plot_curves(experiment_dir: Path, out_dir: Path | None = None, analysis=None) -> list[Path]:
    """rouge.png (competition_score, ROUGE-1/2/L per epoch) and loss.png (train and eval loss per epoch),
    one line per trial, written to `<experiment dir>/report/` (or `out_dir`); returns the paths."""
    plt = pyplot()
    analysis = analysis or load_analysis(experiment_dir)
    series = _curve_series(analysis)
    name = Path(experiment_dir).resolve().name
    written = []
    for filename, metrics in CURVE_PANELS.items():
        fig = _curve_figure(plt, metrics, series, f"{CURVE_TITLES[filename]} — {name}")
        written.append(save_plot(fig, experiment_dir, out_dir, filename))
    return written


def _curve_series(analysis) -> list[tuple[str, str, Any]]:
    """(legend name, status, results frame sorted by iteration) per trial, by experiment name; a name two
    trials share gets the trial id."""
    frames = analysis.trial_dataframes
    series = []
    names = [t.config["experiment"]["name"] for t in analysis.trials]
    for trial in sorted(analysis.trials, key=lambda t: (t.config["experiment"]["name"], t.trial_id)):
        frame = frames.get(trial.trial_id)
        if frame is not None and len(frame) and "training_iteration" in frame:
            frame = frame.sort_values("training_iteration")
        name = trial.config["experiment"]["name"]
        series.append((name if names.count(name) == 1 else f"{name} {trial.trial_id}", trial.status, frame))
    return series


def _curve_figure(plt, metrics: list[tuple[str, str]], series, title: str):
    """One panel per (column, label) in `metrics`, two to a row, with one legend for all of them below."""
    ncols = 2
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(12, 4.2 * nrows + 1.2), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, (column, label) in zip(axes.flat, metrics):
        _curve_panel(ax, column, label, metrics, series, plt.get_cmap("tab10"), handles)
    fig.suptitle(title, fontsize=13)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=min(3, max(1, len(handles))),
               fontsize=9, frameon=False)
    legend_rows = math.ceil(len(handles) / 3)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * legend_rows, 1, 0.95))
    return fig


def _curve_panel(ax, column: str, label: str, metrics, series, cmap, handles: dict[str, Any]) -> None:
    """`column` per epoch, one line per trial (dashed: not TERMINATED); a trial with no values still gets its
    legend entry, marked with its status or "no results yet"; adds the legend handles to `handles`."""
    from matplotlib.ticker import MaxNLocator

    for i, (trial_name, status, frame) in enumerate(series):
        empty = frame is None or not any(c in frame and frame[c].notna().any() for c, _ in metrics)
        notes = [s for s in ((status if status != "TERMINATED" else ""), ("no results yet" if empty else "")) if s]
        legend = trial_name + (f" ({', '.join(notes)})" if notes else "")
        if frame is None or column not in frame or "epoch" not in frame or frame[column].notna().sum() == 0:
            handles.setdefault(legend, ax.plot([], [], color=cmap(i % 10), marker="o")[0])
            continue
        ok = frame[column].notna()
        (line,) = ax.plot(frame["epoch"][ok], frame[column][ok], marker="o", color=cmap(i % 10),
                          linestyle="-" if status == "TERMINATED" else "--")
        handles.setdefault(legend, line)
    ax.set_title(label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(column)
    ax.grid(True, alpha=0.3)


def plot_utilization(experiment_dir: Path, out_dir: Path | None = None, analysis=None) -> Path:
    """utilization.png: GPU utilization (mean and 10th percentile per report interval), GPU memory in use and
    training samples/s over the trial's elapsed time, one line per trial; a CPU trial has no GPU lines."""
    plt = pyplot()
    analysis = analysis or load_analysis(experiment_dir)
    frames = analysis.trial_dataframes
    panels = [("gpu_util_mean", "GPU utilization %, mean per report interval"),
              ("gpu_util_p10", "GPU utilization %, 10th percentile per interval"),
              ("gpu_mem_used_gb", "GPU memory in use (GB, device)"), ("train_samples_per_s", "training samples / s")]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (column, label) in zip(axes.flat, panels):
        drawn = 0
        for i, trial in enumerate(sorted(analysis.trials, key=lambda t: t.config["experiment"]["name"])):
            frame = frame_results(frames.get(trial.trial_id))
            points = [(number(r.get("elapsed_s")), number(r.get(column))) for r in frame]
            points = [(x, y) for x, y in points if x is not None and y is not None]
            if points:
                ax.plot(*zip(*points), marker="o", color=cmap(i % 10), label=trial.config["experiment"]["name"])
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "no values (no GPU in these trials)", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label)
        ax.set_xlabel("trial time (s)")
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
    fig.suptitle(f"GPU utilization and throughput — {Path(experiment_dir).resolve().name}", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return save_plot(fig, experiment_dir, out_dir, "utilization.png")


# ---------------------------------------------------------------------------------------------------
# The `report` command


def print_trial_problems(experiment_dir: Path, rows: list[dict[str, Any]], best) -> None:
    """Below the best trial: a warning when it did not finish, each failed trial's error, and whether the run is
    still going (then the statuses are the ones of the moment)."""
    from trainables.results.status import describe_driver, running_driver

    warning = failure_warning(best) if best is not None else None
    if warning:
        print(f"Warning: the best trial's {warning}")
    for row in rows:
        if row.get("error"):
            print(f"Error in {row['name']} ({row['trial_id']}): {row['error']}")
    record = running_driver(experiment_dir)
    if record:
        print(f"Still running: {describe_driver(record)}; the table is as of its last report")


def print_summary(experiment_dir: Path, metric: str | None = None, plots: bool = True) -> int:
    """Print the result table, the best trial and its checkpoint, and write the plots; return 0 when every
    trial finished, 1 otherwise. `metric` None: the one the experiment ran with."""
    metric, why = experiment_metric(experiment_dir, metric)
    analysis = load_analysis(experiment_dir, metric)
    rows = trial_rows(experiment_dir, metric, analysis=analysis)
    print(f"\nResults of {experiment_dir}, ranked by {metric} ({why}): best {metric} per trial, at best_epoch; "
          "scores are F1, competition_score = mean x 100; train_time_s and peak memory up to the last report")
    print(format_table(rows, TABLE_COLUMNS))
    best, checkpoint, note = best_trial_and_checkpoint(analysis, metric)
    if best is not None:
        if note:
            print(f"Note: {note}")
        print(f"Best trial: {best.config['experiment']['name']} ({best.trial_id}) by {metric}  "
              f"checkpoint: {checkpoint or '-'}")
    else:
        print(f"Best trial: none yet (no trial has reported {metric})")
    print_trial_problems(experiment_dir, rows, best)
    print("\nTelemetry (per trial over its reports: GPU utilization % mean, its lowest 10th percentile, most GPU memory "
          "in use, mean power; training samples and label tokens per second; seconds per evaluation; '-': no GPU)")
    print(format_table(rows, TELEMETRY_COLUMNS))
    if plots:
        try:
            for path in [*plot_curves(experiment_dir, analysis=analysis), plot_utilization(experiment_dir, analysis=analysis)]:
                print(f"Plot: {path}")
        except Exception as err:  # a plot must never hide the table
            print(f"(plots not written: {type(err).__name__}: {err})")
    return 0 if rows and all(r["status"] == "TERMINATED" for r in rows) else 1
