"""Results a person can read: the `report` table and plots, the live experiment summary (agreeing with
ExperimentAnalysis), `predict`'s submission.csv, and W&B offline runs. Everything that only reads results
uses the session's seven-trial smoke grid; the partly failed experiment runs trivial trials (seconds)."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import run_cli, toy_plan

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _analysis(experiment_dir: Path):
    from ray.tune import ExperimentAnalysis

    return ExperimentAnalysis(str(experiment_dir), default_metric="competition_score", default_mode="max")


def _table_rows(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("Results of"))
    header, rule = lines[start + 1], lines[start + 2]
    assert header.startswith("name") and set(rule.replace(" ", "")) == {"-"}
    rows = []
    for line in lines[start + 3:]:
        if not line.strip() or line.startswith("Best trial"):
            break
        rows.append(line)
    return rows


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path


@pytest.mark.slow
def test_report_prints_table_best_checkpoint_and_plots(smoke_grid):
    experiment_dir, grid = smoke_grid
    assert grid.returncode == 0, grid.stdout[-3000:] + grid.stderr[-3000:]
    proc = run_cli("report", str(experiment_dir), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _table_rows(proc.stdout)
    names = sorted(t.config["experiment"]["name"] for t in _analysis(experiment_dir).trials)
    assert [r.split()[0] for r in rows] == names
    assert all(" TERMINATED " in r for r in rows)
    best_line = next(l for l in proc.stdout.splitlines() if l.startswith("Best trial:"))
    checkpoint = Path(best_line.split("checkpoint:")[1].strip())
    assert checkpoint.is_dir() and (checkpoint / "trial_meta.json").exists()
    best = _analysis(experiment_dir).get_best_trial(scope="all")
    assert best.config["experiment"]["name"] in best_line
    plots = [Path(l.split("Plot:")[1].strip()) for l in proc.stdout.splitlines() if l.startswith("Plot:")]
    assert sorted(p.name for p in plots) == ["loss.png", "rouge.png", "utilization.png"]
    for plot in plots:
        assert plot.parent == experiment_dir / "report"
        _assert_png(plot)


@pytest.mark.slow
def test_live_summary_agrees_with_experiment_analysis(smoke_grid):
    experiment_dir, _ = smoke_grid
    folders = sorted(experiment_dir.glob("summary_*"))
    assert len(folders) == 1, folders
    summary = json.loads((folders[0] / "experiment_summary.json").read_text(encoding="utf-8"))
    analysis = _analysis(experiment_dir)
    by_name = {t["name"]: t for t in summary["trials"]}
    assert len(by_name) == len(analysis.trials) and summary["status_counts"] == {"TERMINATED": len(analysis.trials)}
    for trial in analysis.trials:
        name = trial.config["experiment"]["name"]
        frame = analysis.trial_dataframes[trial.trial_id]
        row = by_name[name]
        best = frame.loc[frame["competition_score"].idxmax()]
        assert row["status"] == trial.status == "TERMINATED"
        assert row["trial_id"] == trial.trial_id
        assert row["evaluations"] == len(frame)
        for column in ("competition_score", "rouge1", "rouge2", "rougeL", "eval_loss"):
            assert math.isclose(row[column], best[column], rel_tol=1e-9), (name, column)
        assert row["best_epoch"] == pytest.approx(best["epoch"])
        assert row["eff_precision"] == frame["eff_precision"].iloc[-1]
        log = (folders[0] / "logs" / f"{name}.log").read_text(encoding="utf-8")
        assert log.count(" eval ") == len(frame) and "finished" in log
    best = analysis.get_best_trial(scope="all")
    assert summary["best_trial"]["name"] == best.config["experiment"]["name"]
    text = (folders[0] / "experiment_summary.txt").read_text(encoding="utf-8")
    assert all(name in text for name in by_name) and "best trial:" in text


@pytest.mark.slow
def test_live_progress_table_without_noise(smoke_grid):
    _, grid = smoke_grid
    out = grid.stdout + grid.stderr
    assert "Trial name" in out and "score" in out and "config" in out  # our CLIReporter's table
    for noise in ("FutureWarning", "Failed to load CPU gemm_4bit_forward", "Writing model shards"):
        assert noise not in out, noise


@pytest.mark.slow
def test_predict_writes_a_submission(smoke_grid, suite_data, tmp_path):
    experiment_dir, _ = smoke_grid
    out = tmp_path / "submission.csv"
    proc = run_cli("predict", str(experiment_dir), "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    test = pd.read_csv(suite_data / "test.csv", dtype=str)  # the run's own data folder, as recorded
    sub = pd.read_csv(out, dtype=str, keep_default_na=False, encoding="utf-8")
    assert list(sub.columns) == ["fname", "summary"]
    assert sub["fname"].tolist() == test["fname"].tolist()
    assert (sub["summary"].str.strip() != "").all(), sub[sub["summary"].str.strip() == ""]
    assert not sub["summary"].str.contains("<pad>|</s>|<s>|<unk>", regex=True).any()


@pytest.mark.slow  # starts Ray
def test_report_and_summary_on_a_partly_failed_experiment(tmp_path):
    """One trial reports twice, one fails before any result: both listed, the failure as ERROR."""
    import ray

    from trainables.driver.grid import build_tuner
    from trainables.results.report import print_summary

    def trial(config):
        from ray import tune

        if config["experiment"]["name"] == "b_broken":
            raise RuntimeError("boom before the first evaluation")
        for epoch in (1, 2):
            tune.report({"epoch": float(epoch), "competition_score": 10.0 * epoch, "rouge1": 0.1 * epoch,
                         "rouge2": 0.05 * epoch, "rougeL": 0.08 * epoch, "eval_loss": 3.0 - epoch,
                         "train_loss": 4.0 - epoch, "elapsed_s": 1.0 * epoch, "eff_precision": "fp32"})

    plan, space = toy_plan(["a_fine", "b_broken"], tmp_path, "partial", max_concurrent=2, metric="competition_score")
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        build_tuner(plan, trainable=trial, param_space=space).fit()
    finally:
        ray.shutdown()
    experiment_dir = tmp_path / "partial"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = print_summary(experiment_dir)
    stdout = buffer.getvalue()
    assert code == 1  # not every trial finished
    rows = _table_rows(stdout)
    assert [r.split()[0] for r in rows] == ["a_fine", "b_broken"]
    assert " ERROR " in rows[1] and " TERMINATED " in rows[0]
    assert "Best trial: a_fine" in stdout
    for name in ("rouge.png", "loss.png"):
        _assert_png(experiment_dir / "report" / name)
    summary = json.loads(next(experiment_dir.glob("summary_*/experiment_summary.json")).read_text())
    trials = {t["name"]: t for t in summary["trials"]}
    assert trials["a_fine"]["status"] == "TERMINATED" and trials["a_fine"]["evaluations"] == 2
    assert trials["a_fine"]["competition_score"] == 20.0 and trials["a_fine"]["best_epoch"] == 2.0
    assert trials["b_broken"]["status"] == "ERROR" and trials["b_broken"]["evaluations"] == 0
    assert "boom" in trials["b_broken"].get("error", "")
    assert summary["best_trial"]["name"] == "a_fine"


def test_a_kept_checkpoint_tied_with_the_best_evaluation_is_the_best_without_a_note(tmp_path):
    """Tune keeps one of two equal scores (num_to_keep=1 keeps the later); that kept one is the best checkpoint, and
    nothing claims the run kept its checkpoints by another metric. Seen on a clean-clone smoke run: 25.87 at epochs
    2.84 and 3, checkpoint_000007 deleted, and a note saying it was not kept."""
    from trainables.results.report import kept_checkpoint

    for name in ("checkpoint_000008", "checkpoint_000009"):
        (tmp_path / name).mkdir()
    results = [{"epoch": 2.84, "competition_score": 25.87, "checkpoint_dir_name": "checkpoint_000007"},
               {"epoch": 3.0, "competition_score": 25.87, "checkpoint_dir_name": "checkpoint_000008"},
               {"epoch": 3.2, "competition_score": 20.0, "checkpoint_dir_name": "checkpoint_000009"}]
    assert kept_checkpoint(tmp_path, results, "competition_score") == (str(tmp_path / "checkpoint_000008"), None)
    # a best evaluation without a kept twin still says so, and picks the best that is kept
    results[1]["competition_score"] = 24.0
    checkpoint, note = kept_checkpoint(tmp_path, results, "competition_score")
    assert checkpoint == str(tmp_path / "checkpoint_000008") and "checkpoint_000007) was not kept" in note


def test_a_stopped_runs_summary_keeps_its_unfinished_trials_pending(tmp_path):
    """Ctrl-C/SIGTERM: Tune's cleanup marks the trials it stops TERMINATED without completing them (its saved state
    has them RUNNING, and --resume runs them again). The live summary's last write must not call them finished:
    `--resume` then said "nothing left to run" and started nothing."""
    from types import SimpleNamespace

    from trainables.results.summaries import ExperimentSummaryCallback

    def trial(name, status):
        path = tmp_path / name
        path.mkdir()
        return SimpleNamespace(trial_id=name, config={"experiment": {"name": name}}, status=status, path=str(path),
                               error_file=None)

    finished, stopped = trial("finished", "RUNNING"), trial("stopped", "RUNNING")
    callback = ExperimentSummaryCallback(tmp_path)
    callback.setup()
    for t in (finished, stopped):
        callback.on_trial_start(0, [finished, stopped], t)
    finished.status = "TERMINATED"
    callback.on_trial_complete(1, [finished, stopped], finished)
    stopped.status = "TERMINATED"  # what Tune's cleanup does to a trial it stops at the end of a stopped run
    callback.on_experiment_end([finished, stopped])
    summary = json.loads(next(tmp_path.glob("summary_*/experiment_summary.json")).read_text())
    assert {t["name"]: t["status"] for t in summary["trials"]} == {"finished": "TERMINATED", "stopped": "PENDING"}
