"""What a hostile try of the command line found (issue 12), each through `tune_main7.py` as a user runs it.

Fast (no trial starts): refused flags, unwritable outputs, an existing --name, test.csv checks, an empty YAML,
the unknown-key hint, a model.checkpoint that is neither a folder nor a hub id.

Slow (real smoke trials): two runs started at the same moment with default names, one with --wandb and a secret
planted in `.env` and the environment, each with its own Ray temp folder; every file they wrote is grepped for
the secrets. The other run is stopped with SIGTERM, resumed, stopped with Ctrl-C (SIGINT), and resumed to the
end. `report`/`predict` on the --metric eval_loss run rank by eval_loss, name only kept checkpoints and read the
data folder the run trained on. A Ray cluster started apart from the driver (`ray.cluster_utils.Cluster`, as
`ray start` would) gets the W&B key to its logging actor without the key entering Ray's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, run_cli, run_refused, toy_plan

TRIAL = "01_baseline_kobart_rtx3090"  # the fastest trial: 3 epochs at most in smoke mode
ONLY = ["--only", TRIAL]
SECRETS = {"WANDB_API_KEY": "wandb-planted-4f1c9a77e2", "HF_TOKEN": "hf_planted_8d2e51b0c3"}
ENV_SECRET = ("MY_SERVICE_API_KEY", "svc-planted-6b7e0d3a91")  # in the environment, not in .env


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:") or ": error:" in l]
    assert len(errors) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    return errors[0]


# ---------------------------------------------------------------------------------------------------
# Fast: refused before anything starts


@pytest.mark.parametrize("args,needles", [
    (["--resume", "{storage}/x", "--mode", "quick"], ["--mode", "--resume"]),
    (["--max-concurrent", "0"], ["--max-concurrent", "at least 1"]),
    (["--max-concurrent", "-3"], ["--max-concurrent", "at least 1"]),
], ids=["mode_with_resume", "max_concurrent_0", "max_concurrent_negative"])
def test_flags_that_cant_apply_are_refused(tmp_path, args, needles):
    args = [a.replace("{storage}", str(tmp_path)) for a in args]
    proc = run_refused(*args, *ONLY, "--storage-path", str(tmp_path))
    _one_line_error(proc, *needles)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", ["storage_under_proc", "storage_is_a_file", "cache_is_a_file", "name_taken",
                                  "name_taken_foreign"])
def test_unwritable_or_taken_outputs_stop_before_ray(tmp_path, case):
    storage, afile = tmp_path / "results", tmp_path / "afile"
    storage.mkdir()
    afile.write_text("not a folder\n")
    taken = storage / "mine"
    taken.mkdir()
    (taken / "tune_main7.json").write_text('{"mode": "smoke", "use_gpu": false}')
    (storage / "foreign").mkdir()
    args = {
        "storage_under_proc": ["--storage-path", "/proc/tune_main7_results"],
        "storage_is_a_file": ["--storage-path", str(afile / "results")],
        "cache_is_a_file": ["--storage-path", str(storage), "--cache-dir", str(afile)],
        "name_taken": ["--storage-path", str(storage), "--name", "mine"],
        "name_taken_foreign": ["--storage-path", str(storage), "--name", "foreign"],
    }[case]
    needles = {
        "storage_under_proc": ["--storage-path", "/proc", "can't write"],
        "storage_is_a_file": ["--storage-path", "is a file"],
        "cache_is_a_file": ["--cache-dir", "is a file"],
        "name_taken": ["--name mine", "already exists", f"python tune_main7.py --resume {taken}", "another --name"],
        "name_taken_foreign": ["--name foreign", "already exists", "another --name"],
    }[case]
    if "--cache-dir" not in args:
        args += ["--cache-dir", str(tmp_path / "cache")]
    before = _snapshot(storage)
    proc = run_refused(*args, *ONLY)
    _one_line_error(proc, *needles)
    assert _snapshot(storage) == before
    assert not (tmp_path / "cache").exists(), "stand-ins built before the error"


def test_predict_out_unwritable_fails_before_loading_anything(tmp_path):
    checkpoint = tmp_path / "checkpoint_000000"  # not even a valid checkpoint: --out is checked first
    checkpoint.mkdir()
    for out, needle in (("/proc/tune_main7/sub.csv", "can't write"), (str(tmp_path), "is a folder")):
        proc = run_cli("predict", "--checkpoint", str(checkpoint), "--out", out, timeout=120)
        _one_line_error(proc, "--out", needle)


def _copy_inputs(tmp_path: Path) -> tuple[Path, Path]:
    spaces, data = tmp_path / "spaces", tmp_path / "data"
    shutil.copytree(ROOT / "search_spaces", spaces)
    shutil.copytree(ROOT / "data", data)
    return spaces, data


@pytest.mark.parametrize("content,needles", [
    ("fname,dialogue\nt1,안녕하세요\nt1,반가워요\n", ["test.csv", "duplicate fname", "t1"]),
    ("fname,dialogue\nt1,안녕하세요\n,반가워요\n", ["test.csv", "empty fname", "line(s) 3"]),
    ("id,dialogue\nt1,안녕하세요\n", ["test.csv", "missing column(s) fname"]),
], ids=["duplicate_ids", "empty_id", "missing_column"])
@pytest.mark.parametrize("command", ["check", "run"])
def test_check_and_run_validate_test_csv(tmp_path, content, needles, command):
    spaces, data = _copy_inputs(tmp_path)
    (data / "test.csv").write_text(content, encoding="utf-8")
    args = [] if command == "run" else ["check"]
    proc = run_refused(*args, *ONLY, "--search-space", str(spaces), "--data-dir", str(data), "--storage-path",
                       str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"))
    _one_line_error(proc, *needles)
    assert not (tmp_path / "results").exists()


def test_empty_yaml_says_the_file_is_empty(tmp_path):
    spaces, data = _copy_inputs(tmp_path)
    (spaces / "05_new.yaml").write_bytes(b"")
    proc = run_cli("check", "--search-space", str(spaces), "--data-dir", str(data), timeout=120)
    line = _one_line_error(proc, "05_new.yaml", "file is empty")
    assert "NoneType" not in line


def test_unknown_key_hint_points_at_a_schema_that_exists(tmp_path):
    spaces, data = _copy_inputs(tmp_path)
    path = spaces / f"{TRIAL}.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("  seed: 42", "  seed: 42\n  sead: 43"), encoding="utf-8")
    proc = run_cli("check", *ONLY, "--search-space", str(spaces), "--data-dir", str(data), timeout=120)
    assert proc.returncode == 2 and "training.sead" in proc.stderr, proc.stderr[-2000:]
    hint = next(l for l in proc.stderr.splitlines() if "sead" in l)
    pointed = hint.split("see ", 1)[1].rstrip(")").strip()
    readme = ROOT / pointed
    assert readme.is_file(), f"the hint points at {pointed}, which does not exist"
    text = readme.read_text(encoding="utf-8")
    for section in ("model:", "tokenizer:", "training:", "generation:", "qlora:", "metric:", "seed:"):
        assert section in text, section


@pytest.mark.parametrize("checkpoint,needles", [
    ("/no/such/folder/kobart", ["model.checkpoint /no/such/folder/kobart", "no such folder"]),
    ("../models/kobart", ["model.checkpoint ../models/kobart", "no such folder"]),
    ("my kobart model!", ["neither a folder on disk nor a valid hub id"]),
], ids=["absolute_path", "relative_path", "invalid_id"])
def test_model_checkpoint_neither_folder_nor_hub_id_fails_check_full(tmp_path, checkpoint, needles):
    spaces, data = _copy_inputs(tmp_path)
    path = spaces / f"{TRIAL}.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("checkpoint: digit82/kobart-summarization", f"checkpoint: \"{checkpoint}\""),
                    encoding="utf-8")
    proc = run_cli("check", "--mode", "full", *ONLY, "--search-space", str(spaces), "--data-dir", str(data),
                   timeout=120, env={"HF_HUB_OFFLINE": "1"})
    line = _one_line_error(proc, *needles)
    assert "Repo id must" not in proc.stderr and "huggingface-cli download" not in line


# ---------------------------------------------------------------------------------------------------
# Slow: two real runs at once, secrets, signals, report/predict by the run's metric


def _ray_tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="r12-", dir="/tmp"))  # short: Ray's socket paths have a length limit


def _start(work: Path, ray_tmp: Path, *args: str, log: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in SECRETS and k != "RAY_ADDRESS"}
    env.update({ENV_SECRET[0]: ENV_SECRET[1], "RAY_TMPDIR": str(ray_tmp), "WANDB_MODE": "offline"})
    return subprocess.Popen([sys.executable, str(ROOT / "tune_main7.py"), *args], cwd=work, env=env,
                            stdout=open(work / f"{log}.out", "w"), stderr=open(work / f"{log}.err", "w"))


def _finish(proc: subprocess.Popen, work: Path, log: str, timeout: float = 1500) -> tuple[int, str, str]:
    rc = proc.wait(timeout=timeout)
    return rc, (work / f"{log}.out").read_text(), (work / f"{log}.err").read_text()


def _experiments(storage: Path) -> dict[str, Path]:
    return {d.name: d for d in storage.iterdir() if (d / "tune_main7.json").exists()} if storage.is_dir() else {}


def _trial_dir(experiment_dir: Path) -> Path | None:
    return next((d for d in experiment_dir.iterdir() if (d / "params.json").exists()), None)


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 1500) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        assert proc.poll() is None, f"the run ended before {what}"
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, standin_cache, suite_data):
    """Run A (--wandb, --metric eval_loss) and run B started at the same moment with default names into one
    storage folder; B is stopped by SIGTERM, resumed, stopped by SIGINT, resumed to the end."""
    work = tmp_path_factory.mktemp("hostile")
    (work / ".env").write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    data = work / "data"
    shutil.copytree(suite_data, data)  # the suite's sample: its stand-ins are built already
    with open(data / "train.csv", "a", encoding="utf-8") as f:
        f.write('train_empty,"",요약,t\n')  # dropped, with one warning per run
    test = pd.read_csv(suite_data / "test.csv", dtype=str, keep_default_na=False).head(3)
    test.to_csv(data / "test.csv", index=False)  # 3 rows: predict must read this folder, not the shipped one
    storage = work / "results"
    tmp_a, tmp_b = _ray_tmp(), _ray_tmp()
    common = ["--mode", "smoke", *ONLY, "--storage-path", str(storage), "--data-dir", str(data),
              "--cache-dir", str(standin_cache)]
    a = _start(work, tmp_a, *common, "--wandb", "--metric", "eval_loss", log="a")
    b = _start(work, tmp_b, *common, "--max-concurrent", "1", log="b")
    out = {"work": work, "storage": storage, "ray_tmp": [tmp_a, tmp_b], "data": data, "logs": []}
    try:
        # B: SIGTERM once it has a checkpoint.
        def b_dir():
            found = [d for d in _experiments(storage).values() if not (d / "wandb").exists()
                     and json.loads((d / "tune_main7.json").read_text()).get("metric") == "competition_score"]
            return found[0] if found else None

        def b_has_checkpoint():  # the folder, and its report written by the driver (the folder lands first)
            d = b_dir()
            t = _trial_dir(d) if d else None
            return bool(t and list(t.glob("checkpoint_*")) and (t / "progress.csv").is_file())

        _wait_for(b_has_checkpoint, b, "run B's first checkpoint")
        b.send_signal(signal.SIGTERM)
        out["b_term"] = _finish(b, work, "b", timeout=600)
        out["b_dir"] = b_dir()
        out["b_ray_left"] = subprocess.run(["pgrep", "-f", str(tmp_b)], capture_output=True, text=True).stdout
        out["b_progress_after_term"] = len(pd.read_csv(_trial_dir(out["b_dir"]) / "progress.csv"))
        # Resume, stop with Ctrl-C (SIGINT) once the trial runs again, resume to the end.
        b2 = _start(work, tmp_b, "--resume", str(out["b_dir"]), log="b2")
        summaries_before = set(out["b_dir"].glob("summary_*"))

        def b2_trial_started():
            new = set(out["b_dir"].glob("summary_*")) - summaries_before
            return any("started" in p.read_text() for s in new for p in (s / "logs").glob("*.log"))

        _wait_for(b2_trial_started, b2, "the resumed trial to start")
        b2.send_signal(signal.SIGINT)
        out["b_int"] = _finish(b2, work, "b2", timeout=600)
        b3 = _start(work, tmp_b, "--resume", str(out["b_dir"]), log="b3")
        out["b_end"] = _finish(b3, work, "b3")
        out["a"] = _finish(a, work, "a")
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    a_dirs = [d for d in _experiments(storage).values() if d != out["b_dir"]]
    out["a_dir"] = a_dirs[0] if len(a_dirs) == 1 else None
    yield out
    for t in (tmp_a, tmp_b):
        shutil.rmtree(t, ignore_errors=True)


def _assert_ran_to_its_end_once(trial_dir: Path, where, metric: str = "competition_score") -> None:
    """Smoke mode evaluates every N steps (at least twice per epoch) and at each epoch's end: the trial's reports
    run to the end of its last epoch, or to an early stop (no better `metric` in its last `patience` evaluations),
    each optimizer step reported at most once, in order."""
    progress = pd.read_csv(trial_dir / "progress.csv")
    steps = progress["step"]
    assert steps.is_unique and steps.is_monotonic_increasing, (where, list(steps))
    training = json.loads((trial_dir / "params.json").read_text())["experiment"]["training"]  # as smoke ran it
    scores = progress[metric].tolist()
    best = scores.index(min(scores) if metric.endswith("loss") else max(scores))
    stopped_early = len(scores) - 1 - best == training["early_stopping_patience"]
    assert round(progress["epoch"].iloc[-1]) == training["num_train_epochs"] or stopped_early, (where, list(progress["epoch"]), scores)
    assert len(progress) >= 2, (where, list(progress["epoch"]))


@pytest.mark.slow
def test_two_runs_at_once_get_separate_intact_experiments(two_runs):
    storage = two_runs["storage"]
    rc, stdout, stderr = two_runs["a"]
    assert rc == 0, stdout[-3000:] + stderr[-3000:]
    experiments = _experiments(storage)
    assert len(experiments) == 2 and two_runs["a_dir"] and two_runs["b_dir"], sorted(experiments)
    for d in experiments.values():
        marker = json.loads((d / "tune_main7.json").read_text())
        assert marker["name"] == d.name and d.name.startswith("main7-smoke-")
        from ray.tune import ExperimentAnalysis

        trials = ExperimentAnalysis(str(d), default_metric="eval_loss", default_mode="min").trials
        assert [t.status for t in trials] == ["TERMINATED"], d
        _assert_ran_to_its_end_once(_trial_dir(d), d, json.loads((d / "tune_main7.json").read_text())["metric"])
    assert json.loads((two_runs["a_dir"] / "tune_main7.json").read_text())["metric"] == "eval_loss"
    # The dropped-row warning: once per run, in the driver.
    assert (stdout + stderr).count("train.csv: dropped 1 row(s)") == 1, stderr[-3000:]


@pytest.mark.slow
def test_sigterm_and_ctrl_c_stop_save_and_say_how_to_resume(two_runs):
    b_dir = two_runs["b_dir"]
    for key, signum in (("b_term", signal.SIGTERM), ("b_int", signal.SIGINT)):
        rc, stdout, stderr = two_runs[key]
        assert rc == 128 + signum, (key, rc, stdout[-3000:], stderr[-3000:])
        assert f"python tune_main7.py --resume {b_dir}" in stdout, (key, stdout[-3000:])
        assert "Tuner.restore(" not in stdout + stderr and "*** SIGTERM received" not in stdout + stderr
        assert "Results of" in stdout  # the summary table
    assert two_runs["b_ray_left"].strip() == "", "Ray processes of the stopped run still running"
    summaries = sorted(b_dir.glob("summary_*/experiment_summary.json"))
    assert len(summaries) >= 2
    assert two_runs["b_progress_after_term"] >= 1
    rc, stdout, stderr = two_runs["b_end"]
    assert rc == 0, stdout[-3000:] + stderr[-3000:]
    _assert_ran_to_its_end_once(_trial_dir(b_dir), "continued from its checkpoint, no evaluation twice")


def _outputs(two_runs) -> list[tuple[str, str]]:
    return [(k, text) for k in ("a", "b_term", "b_int", "b_end") for text in two_runs[k][1:]]


@pytest.mark.slow
def test_no_secret_in_any_file_or_output(two_runs):
    planted = [*SECRETS.values(), ENV_SECRET[1]]
    for where, text in _outputs(two_runs):
        for secret in planted:
            assert secret not in text, (where, secret)
    wandb_files = list((two_runs["a_dir"] / "wandb").rglob("*"))
    assert any(p.name.endswith(".wandb") for p in wandb_files), "no W&B offline run was written"
    searched = 0
    for root in (two_runs["storage"], *two_runs["ray_tmp"]):
        for path in Path(root).rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue  # sockets, files removed meanwhile
                searched += 1
                for secret in planted:
                    assert secret.encode() not in data, (path, secret)
    logs = [p for t in two_runs["ray_tmp"] for p in Path(t).rglob("runtime_env_agent*.log")]
    assert logs, "Ray's runtime_env agent log not found: is RAY_TMPDIR honoured?"
    assert searched > 50


@pytest.mark.slow
def test_report_and_predict_use_the_runs_metric_and_kept_checkpoints(two_runs, tmp_path):
    a_dir = two_runs["a_dir"]
    trial = _trial_dir(a_dir)
    kept = {p.name for p in trial.glob("checkpoint_*")}
    proc = run_cli("report", str(a_dir), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ranked by eval_loss (the metric this experiment ran with)" in proc.stdout
    best_line = next(l for l in proc.stdout.splitlines() if l.startswith("Best trial:"))
    assert "by eval_loss" in best_line
    named = Path(best_line.split("checkpoint:")[1].strip())
    assert named.is_dir() and named.name in kept
    progress = pd.read_csv(trial / "progress.csv")
    assert named.name == progress.loc[progress["eval_loss"].idxmin(), "checkpoint_dir_name"]

    # Ranked by another metric: never a deleted checkpoint; when its best was not kept, it says so.
    proc = run_cli("report", str(a_dir), "--metric", "competition_score", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ranked by competition_score (--metric; checkpoints were kept by eval_loss)" in proc.stdout
    best_line = next(l for l in proc.stdout.splitlines() if l.startswith("Best trial:"))
    named = Path(best_line.split("checkpoint:")[1].strip())
    assert named.is_dir() and named.name in kept
    # Ties count: the last two evaluations of a smoke trial are a step apart and often score the same (measured
    # 2026-12-04: checkpoints 7 and 8 at 5.21), and a kept one at the best score is the best, not a stand-in for it.
    best_score = progress["competition_score"].max()
    best_by_score = progress.loc[progress["competition_score"] == best_score, "checkpoint_dir_name"].tolist()
    if not set(best_by_score) & kept:
        assert f"{best_by_score[0]}) was not kept" in proc.stdout and "kept: " in proc.stdout
    else:
        assert named.name in best_by_score and "was not kept" not in proc.stdout, (named.name, best_by_score)

    # predict: the run's metric, the data folder it trained on, named; only kept checkpoints.
    out = tmp_path / "sub.csv"
    proc = run_cli("predict", str(a_dir), "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Best trial by eval_loss (the metric this experiment ran with)" in proc.stdout
    assert f"Test dialogues: {two_runs['data'] / 'test.csv'} (3 rows)" in proc.stdout
    used = Path(next(l for l in proc.stdout.splitlines() if l.startswith("Checkpoint:")).split(":", 1)[1].strip())
    assert used.is_dir() and used.name in kept
    assert len(pd.read_csv(out)) == 3


# ---------------------------------------------------------------------------------------------------
# A cluster started apart from the driver (`--address`): the W&B key reaches the logging actor, not Ray's files


def record_key_hook(run) -> None:
    """WANDB_PROCESS_RUN_INFO_HOOK: runs inside Ray's W&B logging actor; records a hash of the key its W&B run
    was given (the driver's key file hands it over as settings.api_key, the actor's environment stays as it was)."""
    key = run.settings.api_key or ""
    Path(os.environ["TUNE_MAIN7_TEST_HOOK_OUT"], f"{os.getpid()}.sha").write_text(
        (hashlib.sha256(key.encode()).hexdigest() if key else "none")
        + (" (also in the actor's environment)" if os.environ.get("WANDB_API_KEY") else ""))


@pytest.mark.slow
def test_wandb_key_reaches_the_logging_actor_on_a_cluster_without_entering_rays_files(tmp_path, monkeypatch):
    from argparse import Namespace

    import ray
    from ray.cluster_utils import Cluster

    from trainables.driver.grid import build_tuner
    from trainables.driver.launch import start_ray

    ray_tmp = _ray_tmp()
    hook_out = tmp_path / "hook"
    hook_out.mkdir()
    for name in (*SECRETS, "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    # The cluster's processes start without the key, as `ray start` on a head node would.
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("WANDB_PROCESS_RUN_INFO_HOOK", "tests.test_hostile_cli.record_key_hook")
    monkeypatch.setenv("TUNE_MAIN7_TEST_HOOK_OUT", str(hook_out))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        monkeypatch.setenv("WANDB_API_KEY", SECRETS["WANDB_API_KEY"])  # the driver's, as from its .env
        start_ray(Namespace(address=cluster.address, dashboard=False), "smoke", use_gpu=False)

        def trial(config):
            from ray import tune

            tune.report({"score": 1.0})

        plan, space = toy_plan(["exp_a"], tmp_path / "results", "cluster", max_concurrent=1)
        plan.run.wandb = True
        build_tuner(plan, trainable=trial, param_space=space).fit()
    finally:
        ray.shutdown()
        cluster.shutdown()
    seen = [p.read_text() for p in hook_out.glob("*.sha")]
    assert seen == [hashlib.sha256(SECRETS["WANDB_API_KEY"].encode()).hexdigest()], seen
    for root in (ray_tmp, tmp_path / "results"):
        for path in Path(root).rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    assert SECRETS["WANDB_API_KEY"].encode() not in path.read_bytes(), path
                except OSError:
                    pass
    shutil.rmtree(ray_tmp, ignore_errors=True)
