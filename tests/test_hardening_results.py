"""Issue 25, the results side, through the command line in this process (`tune_main7.main`): a trial whose worker
died is ERROR in `report`, and `export`/`predict` never hand out its checkpoint without saying so; a run that is
still starting; resuming a finished experiment; exported folders readable as a plain save.

The experiments are real Tune runs of trivial trials (seconds, one Ray session for the module) whose checkpoints
are copies of one real LoRA checkpoint of the T5 config on a stand-in, so export and predict rebuild a real model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, toy_plan, trained_lora_checkpoint, write_sample

SCORES = {"a_fine": (10.0, 20.0), "b_killed": (30.0, 40.0)}  # b_killed's worker dies after its first report


def _lora_checkpoint(folder: Path, config: str, arch: str, cache: Path) -> Path:
    """A checkpoint folder as a trial leaves one (adapter, tokenizer, trial_meta.json), of `config` on a cold
    stand-in of `arch`, its trainable weights moved as training would."""
    trained_lora_checkpoint(folder, config, arch, cache)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, standin_cache) -> dict[str, Path]:
    """{"died": a_fine and b_killed (--max-failures 0), "finished": a_fine alone, "checkpoint": the real one}."""
    import ray

    from trainables.driver.grid import build_tuner, write_marker

    def trial(config):  # nested: Ray pickles it by value (the workers need not import this module)
        """Two reports, each with a copy of the real checkpoint; b_killed's worker is killed after its first."""
        import shutil
        import signal
        import tempfile

        from ray import tune

        name = config["experiment"]["name"]
        for epoch, score in enumerate(SCORES[name], 1):
            folder = tempfile.mkdtemp()
            shutil.copytree(config["run"]["checkpoint"], folder, dirs_exist_ok=True)
            tune.report({"epoch": float(epoch), "competition_score": score},
                        checkpoint=tune.Checkpoint.from_directory(folder))
            if name == "b_killed":
                os.kill(os.getpid(), signal.SIGKILL)

    storage = tmp_path_factory.mktemp("hardening")
    checkpoint = _lora_checkpoint(storage / "source-checkpoint", "02_eenzeenee_t5_rtx3090", "t5", standin_cache)
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        for name, trials in (("died", ["a_fine", "b_killed"]), ("finished", ["a_fine"])):
            plan, space = toy_plan(trials, storage, name, run_extra={"checkpoint": str(checkpoint)}, max_concurrent=2,
                                   metric="competition_score", max_failures=0)
            write_marker(storage / name, plan)
            build_tuner(plan, trainable=trial, param_space=space).fit()
    finally:
        ray.shutdown()
    return {"died": storage / "died", "finished": storage / "finished", "checkpoint": checkpoint}


def _main(capsys, *args: str) -> tuple[int, str, str]:
    import ray

    from tune_main7 import main

    code = main(list(args))
    assert not ray.is_initialized(), "Ray was started"
    out = capsys.readouterr()
    return code, out.out, out.err


def _row(stdout: str, name: str) -> list[str]:
    return next(line.split() for line in stdout.splitlines() if line.startswith(name + " "))


@pytest.mark.slow  # a Ray session (the module's runs)
def test_report_shows_a_trial_whose_worker_died_as_error_with_its_error(runs, capsys):
    code, out, _ = _main(capsys, "report", str(runs["died"]))
    assert code == 0
    assert _row(out, "a_fine")[2] == "TERMINATED" and _row(out, "b_killed")[2] == "ERROR", out
    assert "Error in b_killed" in out and "worker process has died" in out
    # it scored higher before it died, but the best trial is the one that did not fail, and the report says why
    assert "Best trial: a_fine" in out and "b_killed" in out.split("Best trial:")[0].splitlines()[-1]
    summary = json.loads(next(runs["died"].glob("summary_*/experiment_summary.json")).read_text())
    assert {t["name"]: t["status"] for t in summary["trials"]} == {"a_fine": "TERMINATED", "b_killed": "ERROR"}


@pytest.mark.slow
def test_export_never_hands_out_a_failed_trials_checkpoint_without_saying_so(runs, capsys, tmp_path):
    code, out, _ = _main(capsys, "export", str(runs["died"]), "--out", str(tmp_path / "best"))
    assert code == 0 and "Exported a_fine" in out and "Warning" not in out, out
    assert json.loads((tmp_path / "best" / "trial_meta.json").read_text())["export"]["trial_status"] == "TERMINATED"

    code, out, _ = _main(capsys, "export", str(runs["died"]), "--trial", "b_killed", "--out", str(tmp_path / "failed"))
    assert code == 0 and "Warning: exporting trial b_killed" in out and "ERROR" in out, out
    card = (tmp_path / "failed" / "README.md").read_text(encoding="utf-8")
    assert "**Warning: trial b_killed" in card and "FAILED (status ERROR" in card
    exported = json.loads((tmp_path / "failed" / "trial_meta.json").read_text())["export"]
    assert exported["trial_status"] == "ERROR" and "b_killed" in exported["trial_warning"]


@pytest.mark.slow
def test_predict_warns_for_a_failed_trials_checkpoint_and_its_export(runs, capsys, tmp_path):
    data = write_sample(tmp_path, test=2)
    failed = next(runs["died"].glob("b_killed_*/checkpoint_*"))
    code, out, _ = _main(capsys, "predict", "--checkpoint", str(failed), "--data-dir", str(data),
                         "--out", str(tmp_path / "sub.csv"))
    assert code == 0 and "Warning: predicting with trial b_killed" in out and "ERROR" in out, out
    code, out, _ = _main(capsys, "predict", str(runs["died"]), "--data-dir", str(data), "--out", str(tmp_path / "best.csv"))
    assert code == 0 and "Best trial by competition_score" in out and ": a_fine" in out and "Warning" not in out, out
    assert _main(capsys, "export", str(runs["died"]), "--trial", "b_killed", "--out", str(tmp_path / "m"))[0] == 0
    code, out, _ = _main(capsys, "predict", str(tmp_path / "m"), "--data-dir", str(data), "--out", str(tmp_path / "m.csv"))
    assert code == 0 and "exported from a trial that did not finish well" in out, out


@pytest.mark.slow
def test_resuming_a_finished_experiment_starts_nothing_and_writes_nothing(runs, capsys):
    before = sorted(p.name for p in runs["finished"].iterdir())
    code, out, err = _main(capsys, "--resume", str(runs["finished"]))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Nothing left to run: all 1 trials") and "report" in lines[0], out
    assert sorted(p.name for p in runs["finished"].iterdir()) == before  # no state file, no summary folder


@pytest.mark.slow
def test_a_resume_with_a_failed_trial_is_not_nothing_left(runs):
    from trainables.driver.launch import nothing_left_to_run
    from trainables.layout import read_marker

    assert nothing_left_to_run(runs["died"], read_marker(runs["died"])) is None
    marker = {**read_marker(runs["finished"]), "kind": "search", "samples": 3}  # a search with samples to draw
    assert nothing_left_to_run(runs["finished"], marker) is None


@pytest.mark.slow
def test_exported_folder_is_readable_as_a_plain_save_and_explains_the_t5_loader_notes(runs, capsys, tmp_path):
    old = os.umask(0o022)
    try:
        assert _main(capsys, "export", str(runs["died"]), "--out", str(tmp_path / "m"))[0] == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "m", *(tmp_path / "m").iterdir()]}
    assert modes.pop("m") == 0o755 and set(modes.values()) == {0o644}, modes
    card = (tmp_path / "m" / "README.md").read_text(encoding="utf-8")
    assert "NOT tie them" in card and "expected and harmless" in card
    assert json.loads((tmp_path / "m" / "config.json").read_text())["tie_word_embeddings"] is False


def _write_record(folder: Path, **record) -> None:
    from trainables.layout import DRIVER_RECORD

    (folder / DRIVER_RECORD).write_text(json.dumps(record))


def test_report_on_a_run_that_is_still_starting_says_so(tmp_path, capsys):
    """A marker and no Tune state: Ray is starting (the driver's process is alive), or the run died before it
    scheduled a trial (its process is gone). No Ray in this test: the folder is what a starting run leaves."""
    import socket

    from trainables.layout import MARKER
    from trainables.results.status import write_driver_record

    experiment = tmp_path / "starting"
    experiment.mkdir()
    (experiment / MARKER).write_text(json.dumps({"name": "starting", "mode": "smoke", "use_gpu": False}))
    write_driver_record(experiment, "run")  # this process: alive
    code, out, err = _main(capsys, "report", str(experiment))
    assert code == 0 and out.strip().splitlines()[-1].endswith("has not scheduled its first trial yet; try again in a moment")
    assert "is still starting" in out and f"pid {os.getpid()}" in out, out + err
    code, _, err = _main(capsys, "predict", str(experiment))  # nothing to predict with yet: an error, the same words
    assert code == 2 and "is still starting" in err

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _write_record(experiment, pid=int(dead.stdout), host=socket.gethostname(), command="run", started="earlier")
    code, _, err = _main(capsys, "report", str(experiment))
    assert code == 2 and "stopped before its first trial was scheduled); start a new run" in err, err


# ---------------------------------------------------------------------------------------------------
# A smoke search named after one of the seven configs (one real search for the tests below)


@pytest.fixture(scope="module")
def default_search(tmp_path_factory) -> tuple[Path, int, str]:
    """`search 01_baseline_kobart_rtx3090 --samples 1` in smoke mode on 48 training rows (2 optimizer steps an
    epoch) with a fresh stand-in cache: (experiment folder, exit code, console). One sample: what these tests read
    (the default space's lines and bounds, the recorded alpha and interval, the stand-in lines, the live table's
    line) is per trial; ranking several trials by their best score is test_best_trial_line_ranks_by_each_trials_best_not_its_last's."""
    import contextlib
    import io

    from tune_main7 import main

    folder = tmp_path_factory.mktemp("default-search")
    data = write_sample(folder, train=48, dev=4)
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        code = main(["search", "01_baseline_kobart_rtx3090", "--samples", "1", "--mode", "smoke", "--data-dir", str(data),
                     "--storage-path", str(folder / "results"), "--name", "s", "--cache-dir", str(folder / "cache")])
    return folder / "results" / "s", code, console.getvalue()


def _params(experiment_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(experiment_dir.glob("*/params.json"))]


@pytest.mark.slow  # a Ray search
def test_search_named_after_a_grid_config_searches_the_default_space_and_says_so(default_search):
    experiment_dir, code, out = default_search
    assert code == 0, out[-3000:]
    assert "has no search dimensions, so it searches the default space around its values" in out
    for line in ("search: training.learning_rate ~ loguniform [3e-06, 0.0003]",
                 "search: training.warmup_ratio ~ uniform [0.0, 0.2]", "search: qlora.lora_rank ~ choice [32, 64, 128]"):
        assert line in out, out[:3000]
    marker = json.loads((experiment_dir / "tune_main7.json").read_text())
    assert marker["default_space"] is True and set(marker["dimensions"]) == {
        "training.learning_rate", "training.warmup_ratio", "qlora.lora_rank"}
    assert len(_params(experiment_dir)) == 1
    for params in _params(experiment_dir):
        training = params["experiment"]["training"]
        assert 3e-6 <= training["learning_rate"] <= 3e-4 and 0 <= training["warmup_ratio"] <= 0.2
        assert params["experiment"]["qlora"]["lora_rank"] in (32, 64, 128)


@pytest.mark.slow
def test_smoke_search_evaluates_twice_an_epoch_and_runs_the_alpha_it_records(default_search):
    experiment_dir, code, out = default_search
    assert code == 0, out[-3000:]
    assert "search: qlora.lora_alpha = 128 as written, not scaled by --mode smoke" in out
    for params in _params(experiment_dir):
        # what ran is what is recorded: the sampled rank with the config's alpha (smoke caps neither), and smoke's
        # evaluation interval (48 rows / batch 8 / accumulation 3 = 2 steps an epoch: every step)
        assert params["experiment"]["qlora"]["lora_alpha"] == 128
        assert params["experiment"]["training"]["eval_steps"] == 1
        assert "training.eval_steps: 200 -> 1" in params["run"]["mode_changes"]["01_baseline_kobart_rtx3090"]
    epochs = [[json.loads(l)["epoch"] for l in (d / "result.json").read_text().splitlines()]
              for d in experiment_dir.iterdir() if (d / "result.json").is_file()]
    reached = [e for e in epochs if max(e) >= 1.0]
    assert reached and all(sum(x <= 1.0 for x in e) >= 2 for e in reached), epochs


@pytest.mark.slow
def test_first_run_says_it_builds_each_standin_and_later_runs_reuse_them(default_search, capsys):
    from trainables.config import load_experiment
    from trainables.driver.launch import prepare_models

    experiment_dir, code, out = default_search
    assert code == 0, out[-3000:]
    lines = out.splitlines()
    first = next(i for i, l in enumerate(lines) if l.startswith("Stand-in for digit82/kobart-summarization: a tiny bart"))
    assert "later runs reuse it" in lines[first] and lines[first + 1].startswith("  built in "), lines[first:first + 2]
    cache, data = experiment_dir.parent.parent / "cache", experiment_dir.parent.parent
    prepare_models([load_experiment(ROOT / "search_spaces" / "01_baseline_kobart_rtx3090.yaml")], "smoke", data, cache)
    assert "\n  reused: " in capsys.readouterr().out  # the second time


@pytest.mark.slow
def test_live_table_names_the_best_trial_by_its_best_score(default_search):
    from trainables.results.report import load_analysis

    experiment_dir, code, out = default_search
    assert code == 0, out[-3000:]
    from trainables.results.report import format_value

    line = [l for l in out.splitlines() if l.startswith("Current best trial:")][-1]  # the final table's
    best = {str(t): t.metric_analysis["competition_score"] for t in load_analysis(experiment_dir).trials}
    named = line.split()[3]
    top = max(m["max"] for m in best.values())  # stand-ins at these learning rates may tie: any of the equals
    assert best[named]["max"] == top, (line, best)
    assert line == (f"Current best trial: {named} with best competition_score={format_value(top)} "
                    f"(last {format_value(best[named]['last'])})")


def test_best_trial_line_ranks_by_each_trials_best_not_its_last():
    """Ray's line ranked by the last result: a trial at 30 then 10 lost to one at 20 then 25."""
    from ray.tune.experiment import Trial

    from trainables.results.summaries import best_trial_line

    trials = []
    for name, scores in (("peaked", (30.0, 10.0)), ("steady", (20.0, 25.0))):
        trial = Trial("toy", stub=True, config={"experiment": {"name": name}}, trial_id=name)
        for i, score in enumerate(scores, 1):
            trial.update_last_result({"competition_score": score, "eval_loss": 5.0 - score / 10, "training_iteration": i})
        trials.append(trial)
    assert best_trial_line(trials, "competition_score") == ["Current best trial: toy_peaked with best "
                                                            "competition_score=30 (last 10)"]
    assert best_trial_line(trials, "eval_loss") == ["Current best trial: toy_peaked with best eval_loss=2 (last 4)"]
    assert best_trial_line(trials, "rouge1") == []


def test_smoke_keeps_each_configs_lora_scale():
    """Smoke caps lora_rank at 16 and scales lora_alpha with it (alpha / rank is LoRA's update scale): rank 8 with
    alpha 64 stays as written (a cap of alpha at 32 halved its scale), rank 64 with alpha 16 becomes 16 and 4."""
    from trainables.config import apply_mode, load_experiment

    base = load_experiment(ROOT / "search_spaces" / "01_baseline_kobart_rtx3090.yaml")
    for (rank, alpha), want in (((8, 64), (8, 64)), ((64, 16), (16, 4)), ((64, 128), (16, 32))):
        cfg = base.model_copy(update={"qlora": base.qlora.model_copy(update={"lora_rank": rank, "lora_alpha": alpha})})
        smoke, _ = apply_mode(cfg, "smoke")
        assert (smoke.qlora.lora_rank, smoke.qlora.lora_alpha) == want
