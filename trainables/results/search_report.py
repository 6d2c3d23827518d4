"""Reading a search's results (trainables.driver.search runs it): trials ranked by the run's metric, the best sampled
values, and the metric plotted against each searched setting (search.png)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trainables.config import mode_of
from trainables.layout import stopped_early
from trainables.results.report import (
    best_trial_and_checkpoint, format_table, number, plot_curves, print_trial_problems, pyplot, save_plot, trial_rows,
)

def sampled_values(config: dict[str, Any], dimensions: list[str]) -> dict[str, Any]:
    exp = config.get("experiment", {})
    return {name: exp.get(name.split(".")[0], {}).get(name.split(".")[1]) for name in dimensions}


def search_rows(experiment_dir: Path, marker: dict[str, Any], metric: str, analysis) -> list[dict[str, Any]]:
    """One row per trial, best first: status (STOPPED_EARLY for ASHA's), best metric, the sampled values."""
    dims = list(marker.get("dimensions", {}))
    trials = {t.trial_id: t for t in analysis.trials}
    rows = []
    for row in trial_rows(experiment_dir, metric, analysis=analysis):
        trial = trials[row["trial_id"]]
        if row["status"] == "TERMINATED" and stopped_early(trial.path) is not None:
            row["status"] = "STOPPED_EARLY"
        row.update(sampled_values(trial.config, dims))
        rows.append(row)
    sign = -1 if mode_of(metric) == "max" else 1
    rows.sort(key=lambda r: (number(r.get(metric)) is None, sign * (number(r.get(metric)) or 0.0)))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank if number(row.get(metric)) is not None else None
    return rows


def _short(name: str) -> str:
    return name.split(".")[-1]


def plot_search(experiment_dir: Path, rows: list[dict[str, Any]], marker: dict[str, Any], metric: str,
                out_dir: Path | None = None) -> Path:
    """search.png: the best `metric` of each trial against each searched setting (hollow: stopped early)."""
    plt = pyplot()
    dims = list(marker.get("dimensions", {}))
    ncols = min(3, len(dims))
    nrows = math.ceil(len(dims) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 4 * nrows + 0.8), squeeze=False)
    scored = [r for r in rows if number(r.get(metric)) is not None]
    for ax, name in zip(axes.flat, dims):
        _search_panel(ax, name, marker.get("kinds", {}).get(name), scored, metric)
    for ax in list(axes.flat)[len(dims):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False)
    fig.suptitle(f"{metric} against each searched setting — {Path(experiment_dir).resolve().name}", fontsize=12)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return save_plot(fig, experiment_dir, out_dir, "search.png")


def _search_panel(ax, name: str, kind: str | None, scored: list[dict[str, Any]], metric: str) -> None:
    """Each scored trial's `metric` against the searched setting `name` (`scored` is best first: its first row
    gets a red star); a choice is plotted at its value's position, a loguniform on a log axis."""
    from matplotlib.ticker import MaxNLocator, NullFormatter

    categorical = kind == "choice"
    values = {r.get(name) for r in scored}
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and number(v) is not None for v in values)
    labels = [repr(v) for v in sorted(values, key=lambda v: (v if numeric else str(v)))] if categorical else []
    for early in (False, True):
        pts = [r for r in scored if (r["status"] == "STOPPED_EARLY") == early]
        xs = [labels.index(repr(r.get(name))) if categorical else r.get(name) for r in pts]
        ax.scatter(xs, [r[metric] for r in pts], s=50, label="stopped early (ASHA)" if early else "ran to the end",
                   facecolors="none" if early else "tab:blue", edgecolors="tab:blue")
    if scored:
        best = scored[0]
        x = labels.index(repr(best.get(name))) if categorical else best.get(name)
        ax.scatter([x], [best[metric]], marker="*", s=220, color="tab:red", label="best", zorder=3)
    if categorical:
        ax.set_xticks(range(len(labels)), labels)
    elif kind == "loguniform":
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labels on the decades only: minor ones overlap
    elif kind == "integer":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(name)
    ax.set_ylabel(f"best {metric}")
    ax.grid(True, alpha=0.3)


SEARCH_COLUMNS = ["rank", "trial_id", "status", "evaluations", "best_epoch", "competition_score", "rouge1", "rouge2",
                  "rougeL", "eval_loss", "train_time_s"]


def print_search_summary(experiment_dir: Path, marker: dict[str, Any], metric: str, analysis, plots: bool = True) -> int:
    """The `report` of a search: trials ranked by `metric`, the best sampled values, search.png."""
    rows = search_rows(experiment_dir, marker, metric, analysis)
    dims = list(marker.get("dimensions", {}))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"\nSearch {experiment_dir}: around {', '.join(marker.get('experiments', []))} ({marker.get('config')}), "
          f"{len(rows)} of {marker.get('samples')} samples, " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for name, how in marker.get("dimensions", {}).items():
        print(f"  {name} ~ {how}")
    print(f"Trials ranked by best {metric} (STOPPED_EARLY: ASHA stopped it at a poor evaluation)")
    columns = SEARCH_COLUMNS[:5] + ([metric] if metric not in SEARCH_COLUMNS else []) + SEARCH_COLUMNS[5:] + dims
    print(format_table(rows, columns))
    best, checkpoint, note = best_trial_and_checkpoint(analysis, metric)
    if best is not None:
        if note:
            print(f"Note: {note}")
        values = sampled_values(best.config, dims)
        print(f"Best trial: {best.trial_id}  {metric}={next((r[metric] for r in rows if r['trial_id'] == best.trial_id), None)}"
              f"  checkpoint: {checkpoint or '-'}")
        print("Best sampled values: " + ", ".join(f"{k}={v!r}" for k, v in values.items()))
    else:
        print(f"Best trial: none yet (no trial has reported {metric})")
    print_trial_problems(experiment_dir, rows, best)
    if plots:
        try:
            print(f"Plot: {plot_search(experiment_dir, rows, marker, metric)}")
            for path in plot_curves(experiment_dir, analysis=analysis):
                print(f"Plot: {path}")
        except Exception as err:  # a plot must never hide the table
            print(f"(plots not written: {type(err).__name__}: {err})")
    done = rows and len(rows) >= int(marker.get("samples") or 0) and \
        all(r["status"] in ("TERMINATED", "STOPPED_EARLY") for r in rows)
    return 0 if done else 1
