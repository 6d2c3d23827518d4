"""Reading results with Ray Tune's own records (`tune.ExperimentAnalysis`): tables and summaries.

Works on a finished, running or partly failed experiment; never imports the trainable.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trainables.grid import EXPERIMENT_PREFIX, MARKER

SCORE_COLUMNS = ("competition_score", "rouge1", "rouge2", "rougeL")


def latest_experiment(storage_path: Path) -> Path | None:
    """The newest experiment folder of ours under `storage_path`."""
    storage_path = Path(storage_path)
    if not storage_path.is_dir():
        return None
    ours = [p for p in storage_path.iterdir() if p.is_dir() and (p / MARKER).exists()]
    return max(ours, key=lambda p: (p / MARKER).stat().st_mtime) if ours else None


def load_analysis(experiment_dir: Path, metric: str = "competition_score"):
    from ray.tune import ExperimentAnalysis

    return ExperimentAnalysis(str(Path(experiment_dir).resolve()), default_metric=metric,
                              default_mode="min" if metric == "eval_loss" else "max")


def trial_rows(experiment_dir: Path, metric: str = "competition_score") -> list[dict[str, Any]]:
    """One row per trial: its config name, status, best scores and where they happened."""
    analysis = load_analysis(experiment_dir, metric)
    frames = analysis.trial_dataframes
    rows = []
    for trial in sorted(analysis.trials, key=lambda t: t.config["experiment"]["name"]):
        exp = trial.config["experiment"]
        frame = frames.get(trial.trial_id)
        row: dict[str, Any] = {
            "name": exp["name"], "model": exp["model"]["checkpoint"], "status": trial.status,
            "evaluations": 0 if frame is None else len(frame),
        }
        if frame is not None and metric in frame and frame[metric].notna().any():
            best = frame.loc[frame[metric].idxmin() if metric == "eval_loss" else frame[metric].idxmax()]
            for column in (*SCORE_COLUMNS, "epoch", "eval_loss"):
                row[column] = best.get(column)
            last = frame.iloc[-1]
            for column in ("elapsed_s", "peak_gpu_mem_gb", "eff_precision", "eff_load_in_4bit", "eff_unsloth",
                           "eff_train_batch_size", "eff_gradient_accumulation_steps", "eff_model_source"):
                row[column] = last.get(column)
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths))
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def print_summary(experiment_dir: Path, metric: str = "competition_score") -> int:
    """Print the result table; return 0 when every trial finished, 1 otherwise."""
    rows = trial_rows(experiment_dir, metric)
    columns = ["name", "status", "evaluations", "epoch", *SCORE_COLUMNS, "eff_precision", "eff_load_in_4bit",
               "eff_train_batch_size", "elapsed_s", "peak_gpu_mem_gb"]
    print(f"\nResults of {experiment_dir} (best {metric} per trial; scores are F1, competition_score = mean x 100)")
    print(format_table(rows, columns))
    analysis = load_analysis(experiment_dir, metric)
    try:
        best = analysis.get_best_trial(metric=metric, scope="all")
    except Exception:  # no trial reported the metric yet
        best = None
    if best is not None:
        checkpoint = analysis.get_best_checkpoint(best, metric=metric)
        print(f"Best trial: {best.config['experiment']['name']}  checkpoint: {checkpoint.path if checkpoint else '-'}")
    return 0 if rows and all(r["status"] == "TERMINATED" for r in rows) else 1
