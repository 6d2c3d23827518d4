"""`tune_main7.py search`: search dimensions in YAML, checked before Ray starts; Optuna + ASHA on the smoke
stand-ins, with trials stopped early recorded as such; a killed search resumed without re-running trials.

The fast tests need no Ray. The two searches (slow) run the KoBART baseline, the fastest config, for 2
epochs with one of two learning rates that score apart (measured: 1e-7 keeps the warm stand-in's ~4.1, 5e-3 ends
at ~3.7 on the sample), so ASHA has a poor trial to stop.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, kill_between_writes, run_cli, run_refused

BASE = "01_baseline_kobart_rtx3090"
EXAMPLE = ROOT / "search_spaces" / "search" / "kobart_baseline.yaml"


def _search_yaml(folder: Path, body: str, name: str = "space") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"base: {ROOT / 'search_spaces' / (BASE + '.yaml')}\n{body}", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------
# Parsing and checking (no Ray)


def test_example_search_space_parses_and_keeps_sampled_values_in_smoke():
    from trainables.driver.search import check_search_space, read_search_space, resolve_config

    path = resolve_config("kobart_baseline", ROOT / "search_spaces")
    assert path == EXAMPLE
    space = read_search_space(path, ROOT / "search_spaces")
    dims = {d.name: (d.kind, d.values) for d in space.dimensions}
    assert dims == {
        "training.learning_rate": ("loguniform", [1e-5, 1e-3]), "training.warmup_ratio": ("uniform", [0.0, 0.2]),
        "qlora.lora_rank": ("choice", [16, 32, 64]), "qlora.lora_dropout": ("uniform", [0.0, 0.2]),
        "generation.no_repeat_ngram_size": ("integer", [2, 4]),
    }
    assert space.name == "kobart_baseline" and space.raw["model"]["checkpoint"] == "digit82/kobart-summarization"
    written, base, changes, _ = check_search_space(space, "smoke")
    # smoke's limits change fixed values (epochs, lengths) but never a searched one (its lr floor, rank cap)
    assert base.training.learning_rate == 1e-5 and base.qlora.lora_rank == 16
    assert written.training.num_train_epochs == 4 and base.training.num_train_epochs == 3
    assert "training.num_train_epochs: 4 -> 3" in changes
    assert not [c for c in changes if c.startswith(tuple(dims))]
    _, full, full_changes, _ = check_search_space(space, "full")
    assert full.training.num_train_epochs == 4 and full_changes == []


def test_dimensions_become_optuna_distributions_with_the_documented_ends():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from trainables.driver.search import Dimension

    integer = Dimension("generation", "num_beams", "integer", [2, 4]).distribution()
    assert isinstance(integer, IntDistribution) and (integer.low, integer.high) == (2, 4)  # both ends included
    log = Dimension("training", "learning_rate", "loguniform", [1e-5, 1e-3]).distribution()
    assert isinstance(log, FloatDistribution) and log.log and (log.low, log.high) == (1e-5, 1e-3)
    assert not Dimension("training", "warmup_ratio", "uniform", [0.0, 0.2]).distribution().log
    choice = Dimension("qlora", "lora_rank", "choice", [16, 32]).distribution()
    assert isinstance(choice, CategoricalDistribution) and choice.choices == (16, 32)
    assert Dimension("qlora", "lora_rank", "choice", [16]).config_key == "experiment/qlora/lora_rank"


BAD_SPACES = [
    ("empty-range", "training:\n  learning_rate: {uniform: [1.0e-3, 1.0e-3]}\n", "range [0.001, 0.001] is empty"),
    ("log-zero", "training:\n  learning_rate: {loguniform: [0, 1.0e-3]}\n", "includes zero"),
    ("empty-choice", "qlora:\n  lora_rank: {choice: []}\n", "choice needs a non-empty list"),
    ("unknown-key", "training:\n  learnin_rate: {loguniform: [1.0e-5, 1.0e-3]}\n", "training.learnin_rate: no such setting"),
    ("unknown-section", "trainer:\n  lr: {uniform: [0.1, 0.2]}\n", "trainer.lr: no such setting"),
    ("float-on-int", "qlora:\n  lora_rank: {uniform: [8, 64]}\n", "use {integer: [low, high]}"),
    ("kind-typo", "training:\n  learning_rate: {log_uniform: [1.0e-5, 1.0e-3]}\n", "'log_uniform' is not a kind"),
    ("end-out-of-schema", "qlora:\n  lora_rank: {integer: [8, 2048]}\n", "qlora.lora_rank=2048"),
    ("cross-check", "generation:\n  max_length: {integer: [50, 400]}\n", "generation.max_length 400 is far above"),
]


def test_a_config_without_dimensions_searches_the_default_space_around_its_values(tmp_path):
    """One of the seven configs (or any YAML without dimensions) is searched around its own values: learning rate
    a tenth to ten times, warmup 0 to twice (at least 0.2), LoRA rank half, once and twice."""
    from trainables.driver.search import check_search_space, read_search_space, resolve_config

    space = read_search_space(resolve_config(BASE, ROOT / "search_spaces"), ROOT / "search_spaces")
    assert space.default and space.name == BASE
    assert {d.name: (d.kind, d.values) for d in space.dimensions} == {
        "training.learning_rate": ("loguniform", [3e-6, 3e-4]), "training.warmup_ratio": ("uniform", [0.0, 0.2]),
        "qlora.lora_rank": ("choice", [32, 64, 128])}
    own = read_search_space(_search_yaml(tmp_path, "training:\n  learning_rate: 1.0e-4\n  warmup_ratio: 0.15\n"),
                            ROOT / "search_spaces")
    assert {d.name: d.values for d in own.dimensions}["training.learning_rate"] == [1e-5, 1e-3]
    assert {d.name: d.values for d in own.dimensions}["training.warmup_ratio"] == [0.0, 0.3]
    check_search_space(own, "smoke")  # every end validates


def test_smoke_search_keeps_the_lora_scale_and_evaluates_twice_an_epoch(tmp_path):
    """A searched lora_rank is used as sampled, so lora_alpha stays as written (smoke scales it with its rank cap:
    capping it alone would change alpha / rank); smoke's evaluation interval applies to a search too, the shortest
    one any sampled batch size needs for two evaluations an epoch."""
    from trainables.config import smoke_eval_steps
    from trainables.driver.search import check_search_space, read_search_space

    space = read_search_space(EXAMPLE, ROOT / "search_spaces")
    _, running, changes, _ = check_search_space(space, "smoke", train_rows=300)
    assert running.qlora.lora_alpha == 128 and not [c for c in changes if c.startswith("qlora.lora_alpha")]
    t = running.training
    assert t.eval_steps == smoke_eval_steps(200, 300, t.per_device_train_batch_size, t.gradient_accumulation_steps) < 200
    batches = read_search_space(_search_yaml(tmp_path, "training:\n  per_device_train_batch_size: {choice: [2, 8]}\n"),
                                ROOT / "search_spaces")
    _, running, _, _ = check_search_space(batches, "smoke", train_rows=300)
    accumulation = running.training.gradient_accumulation_steps
    assert running.training.eval_steps == min(smoke_eval_steps(200, 300, b, accumulation) for b in (2, 8))


def _main(capsys, *args: str) -> tuple[int, str]:
    """The command line in this process (a subprocess per case costs seconds of imports); (exit code, stderr)."""
    import sys as _sys

    import ray

    from tune_main7 import main

    code = main(list(args))
    assert not ray.is_initialized(), "Ray was started"
    captured = capsys.readouterr()
    _sys.stderr.write(captured.err)
    return code, captured.err


@pytest.mark.parametrize("body,expect", [(b, e) for _, b, e in BAD_SPACES], ids=[i for i, _, _ in BAD_SPACES])
def test_bad_search_space_stops_before_ray(tmp_path, capsys, body, expect):
    path = _search_yaml(tmp_path, body)
    storage = tmp_path / "results"
    code, err = _main(capsys, "search", str(path), "--samples", "2", "--storage-path", str(storage))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], err
    assert not storage.exists()  # nothing written


@pytest.mark.parametrize("args,expect", [
    (["--samples", "0"], "--samples: expected a whole number of at least 1, got '0'"),
    ([], "--samples N is required"),
    (["--samples", "2", "--only", BASE], "--only is a flag of run and check and plan, not of search"),
])
def test_bad_search_command_stops_before_ray(tmp_path, capsys, args, expect):
    code, err = _main(capsys, "search", "kobart_baseline", *args, "--storage-path", str(tmp_path / "r"))
    assert code == 2 and expect in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_samples_zero_through_the_real_command_line(tmp_path):
    proc = run_refused("search", "kobart_baseline", "--samples", "0", "--storage-path", str(tmp_path / "r"))
    assert proc.returncode == 2 and proc.stderr.strip() == ("error: --samples: expected a whole number of at least 1, "
                                                            "got '0'; see python tune_main7.py search --help")
    assert "--samples" in run_refused("--samples", "3", "--storage-path", str(tmp_path / "r")).stderr


def test_fixed_grid_refuses_search_dimensions(tmp_path):
    from trainables.config import load_search_space

    grid = sorted(c.name for c in load_search_space(ROOT / "search_spaces"))
    assert grid == sorted(p.stem for p in (ROOT / "search_spaces").glob("*.yaml"))  # search/ and llm/ are not part of it
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    text = (ROOT / "search_spaces" / f"{BASE}.yaml").read_text(encoding="utf-8")
    (spaces / f"{BASE}.yaml").write_text(text.replace("lora_rank: 64", "lora_rank: {choice: [16, 32]}"), encoding="utf-8")
    proc = run_cli("check", "--search-space", str(spaces), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "qlora.lora_rank is a search dimension" in proc.stderr and "tune_main7.py search" in proc.stderr


def test_trial_revalidates_its_sampled_config():
    """A value the driver could not see (a sampled one) goes through the same schema inside the trial."""
    from trainables.config import ConfigError, apply_mode, load_experiment
    from trainables.trial.entry import train_summarizer as train_sampled  # a search's trials run the grid's trainable

    exp = apply_mode(load_experiment(ROOT / "search_spaces" / f"{BASE}.yaml"), "smoke")[0].model_dump()
    run = {"mode": "smoke", "data_dir": str(ROOT / "data"),
           "models": {exp["model"]["checkpoint"]: {"model_path": "unused", "model_source": "unused"}}}
    exp["qlora"]["lora_rank"] = 0
    with pytest.raises(ConfigError, match="qlora.lora_rank") as err:
        train_sampled({"experiment": exp, "run": run})
    assert "run." not in str(err.value)  # only the sampled value is wrong
    exp["qlora"]["lora_rank"], exp["qlora"]["target_modules"] = 8, ["wi"]
    with pytest.raises(ConfigError, match="match no module"):
        train_sampled({"experiment": exp, "run": run})


# ---------------------------------------------------------------------------------------------------
# Real searches on the stand-ins (slow)

# Two learning rates whose smoke scores differ (1e-7 leaves the warm stand-in at ~4.1; 5e-3 drops it to ~3.7). With
# one trial at a time the run is deterministic: TPE's seeded start samples 1e-7 first and 5e-3 second, and ASHA stops
# the second at its first evaluation. Two at once made it a race (measured: the worse trial reporting first is not
# stopped, since ASHA compares each trial with those already at the rung).
# The poor value listed first: TPE's two seeded startup draws (seed 42) then give 5e-3 and 1e-7, in that order, so
# the poor trial meets a better one at ASHA's first rung before the kill (Tune saves the searcher's state, not
# the scheduler's: a resumed search's ASHA starts with empty rungs). Listed the other way round, the poor trial came
# first and none was stopped on the suite's sample (measured: 1e-7, then 5e-3 three times).
SMOKE_SPACE = "training:\n  num_train_epochs: 2\n  learning_rate: {choice: [1.0e-7, 5.0e-3]}\n"


def _trial_dirs(experiment_dir: Path) -> dict[str, Path]:
    return {d.name.rsplit("_", 1)[-1]: d for d in experiment_dir.iterdir() if (d / "params.json").exists()}


def _analysis(experiment_dir: Path):
    from ray.tune import ExperimentAnalysis

    return ExperimentAnalysis(str(experiment_dir), default_metric="competition_score", default_mode="max")


def _saved_statuses(experiment_dir: Path) -> list[str]:
    """The trial statuses in Tune's last saved experiment state (what a resume starts from)."""
    states = sorted(experiment_dir.glob("experiment_state-*.json")) if experiment_dir.is_dir() else []
    try:
        return [json.loads(t[0])["status"] for t in json.loads(states[-1].read_text())["trial_data"]] if states else []
    except (ValueError, KeyError, IndexError, TypeError):
        return []  # being written


def _kill_once_finished(driver: subprocess.Popen, experiment_dir: Path, finished: int, log: Path) -> None:
    """SIGKILL the search's process group as soon as Tune's saved state has `finished` ended trials."""
    deadline = time.time() + 900
    try:
        while time.time() < deadline and driver.poll() is None:
            if _saved_statuses(experiment_dir).count("TERMINATED") >= finished:
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the search ended before it could be killed: " + log.read_text()[-2000:]
        assert time.time() < deadline, "not enough finished trials in time"
    finally:
        kill_between_writes(driver, experiment_dir)


@pytest.mark.slow
def test_smoke_search_stops_poor_trials_early_resumes_after_a_kill_and_reports_the_best(tmp_path, standin_cache,
                                                                                        suite_data):
    """One search of 4 samples, one at a time, SIGKILLed after its third finished trial and resumed: ASHA stopped
    the poor ones at their first evaluation, the finished trials were not run again, the searcher came back with
    its state, and report/predict rank the trials like any experiment. (Was two searches: 4 samples; 3 samples,
    killed after the first.) Ranked by dev loss: a trial at lr 1e-7 keeps the untrained stand-in's loss, while its
    ROUGE on 12 dev rows can beat a trained trial's first evaluation (measured 2026-12-04: 2.46 against 1.99 at
    lr 5e-3, whose loss was already 5.50 against 5.92), so by ROUGE ASHA had no poor trial to stop."""
    path = _search_yaml(tmp_path, SMOKE_SPACE, "lr_search")
    storage = tmp_path / "results"
    experiment_dir = storage / "search"
    log = tmp_path / "driver.out"
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "tune_main7.py"), "search", str(path), "--mode", "smoke", "--samples", "4",
         "--metric", "eval_loss", "--max-concurrent", "1", "--data-dir", str(suite_data), "--storage-path", str(storage),
         "--name", "search", "--cache-dir", str(standin_cache)],
        cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    _kill_once_finished(driver, experiment_dir, 3, log)
    before = {t.trial_id: (t.status, t.config["experiment"]["training"]["learning_rate"])
              for t in _analysis(experiment_dir).trials}
    finished = {tid for tid, (status, _) in before.items() if status == "TERMINATED"}
    assert 3 <= len(finished) < 4, before  # killed mid-search, after three finished trials
    rows_before = {tid: (d / "result.json").read_text() for tid, d in _trial_dirs(experiment_dir).items()
                   if tid in finished}

    proc = run_cli("search", "--resume", str(experiment_dir), "--storage-path", str(storage), timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"Resuming {experiment_dir}" in proc.stdout
    marker = json.loads((experiment_dir / "tune_main7.json").read_text())
    assert marker["kind"] == "search" and marker["samples"] == 4
    assert marker["dimensions"] == {"training.learning_rate": "choice [1e-07, 0.005]"}

    analysis = _analysis(experiment_dir)
    assert len(analysis.trials) == 4, "the search continued to its 4 samples, no more"
    assert {t.status for t in analysis.trials} == {"TERMINATED"}
    for tid, (_, lr) in before.items():  # the same trials, with the values they were sampled with
        assert next(t for t in analysis.trials if t.trial_id == tid).config["experiment"]["training"]["learning_rate"] == lr
    for tid, text in rows_before.items():  # finished trials were not run again
        assert (_trial_dirs(experiment_dir)[tid] / "result.json").read_text() == text
    # The searcher came back with its state: Optuna's study knows every trial, each told once.
    study = _find_study(pickle.loads(sorted(experiment_dir.glob("searcher-state-*.pkl"))[-1].read_bytes()))
    assert study is not None and len(study.trials) == 4
    assert all(t.state.name == "COMPLETE" for t in study.trials), [t.state for t in study.trials]

    dirs = _trial_dirs(experiment_dir)
    stopped = {tid for tid, d in dirs.items() if (d / "stopped_early.json").exists()}
    evaluations = {tid: len(pd.read_csv(d / "progress.csv")) for tid, d in dirs.items()}
    assert stopped, f"ASHA stopped no trial: {evaluations}"
    for tid in stopped:  # stopped at its first evaluation (the first rung), before its last one (epoch 2)
        assert evaluations[tid] == 1, evaluations
        assert json.loads((dirs[tid] / "stopped_early.json").read_text())["by"] == "ASHA"
        assert not (dirs[tid] / "error.txt").exists()
    # some trial ran to its end, evaluating at least twice an epoch (smoke's shortened eval_steps, as in the grid)
    assert any(n >= 4 for tid, n in evaluations.items() if tid not in stopped), evaluations

    # The trial really ran its sampled value, re-validated, with smoke's other limits on the fixed values.
    lrs = {t.trial_id: t.config["experiment"]["training"]["learning_rate"] for t in analysis.trials}
    assert set(lrs.values()) <= {1e-7, 5e-3}
    # report: ranked rows, the best sampled values, the plot of the metric against the searched setting
    proc = run_cli("report", str(experiment_dir), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "STOPPED_EARLY" in proc.stdout and "Best sampled values: training.learning_rate=" in proc.stdout
    best = analysis.get_best_trial("eval_loss", "min", scope="all")
    assert f"Best trial: {best.trial_id}" in proc.stdout
    table = proc.stdout.split("Trials ranked by")[1].splitlines()
    ranked = [line.split()[1] for line in table[3:3 + 4]]
    assert ranked[0] == best.trial_id and sorted(ranked) == sorted(lrs)
    assert (experiment_dir / "report" / "search.png").stat().st_size > 10_000
    # predict's choice of checkpoint takes the best trial like any other experiment
    from trainables.results.predict import best_checkpoint

    _, checkpoint = best_checkpoint(experiment_dir)
    assert Path(checkpoint).parent == dirs[best.trial_id] and (Path(checkpoint) / "trial_meta.json").is_file()


def _find_study(obj, depth: int = 0):
    """Optuna's study inside Tune's pickled searcher state (SearchGenerator -> ConcurrencyLimiter -> OptunaSearch)."""
    import optuna

    if isinstance(obj, optuna.Study):
        return obj
    if depth > 6:
        return None
    children = obj.values() if isinstance(obj, dict) else (vars(obj).values() if hasattr(obj, "__dict__") else [])
    for child in children:
        found = _find_study(child, depth + 1)
        if found is not None:
            return found
    return None
