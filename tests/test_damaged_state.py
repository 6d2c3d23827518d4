"""A resume from Tune state that can't be read back (the driver was SIGKILLed while Tune copied its state files out
of its staging folder, seen once in CI): refused before Ray starts, naming the cut file and Tune's whole staged
copy, with nothing in the folder changed; and should Tune itself fail to restore, an error instead of Tune's
silent start-over with an empty config. One real (trivial) Tune run backs all of it."""

from __future__ import annotations

import shlex

import pytest

from tests.conftest import run_refused, toy_plan
from trainables import compat

pytestmark = pytest.mark.slow  # a Tune run in a local Ray


def _report_once(config):
    from ray import tune

    tune.report({"epoch": 1.0, "score": 1.0})


@pytest.fixture(scope="module")
def toy_ray():
    """One local Ray for the module's Tune calls (its tests share one xdist worker: conftest.RUN_FIXTURES)."""
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def killed_grid(tmp_path_factory, toy_ray):
    """A real two-trial Tune experiment of ours (marker written), its folder as a killed driver leaves it."""
    from trainables.driver.grid import build_tuner, write_marker

    storage = tmp_path_factory.mktemp("damaged")
    plan, space = toy_plan(["a_one", "b_two"], storage, "cut", metric="score")
    write_marker(storage / "cut", plan)
    build_tuner(plan, trainable=_report_once, param_space=space).fit()
    return storage / "cut"


def _cut(path) -> bytes:
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return whole


def _folder_bytes(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_tune_writes_the_state_files_compat_reads(killed_grid):
    """Canary for compat.TUNE_STATE_FILES: a real run's state files match its patterns and read back."""
    names = sorted(p.name for p in killed_grid.iterdir())
    found = [pattern for pattern, _ in compat.TUNE_STATE_FILES if any(killed_grid.glob(pattern))]
    assert {"experiment_state-*.json", "basic-variant-state-*.json"} <= set(found), (
        f"ray moved its state file names ({names}): update trainables/compat.py:TUNE_STATE_FILES")
    assert compat.unreadable_tune_state(killed_grid) == []


@pytest.mark.parametrize("pattern", ["experiment_state-*.json", "basic-variant-state-*.json"])
def test_a_cut_state_file_is_named_with_its_whole_staged_copy_and_nothing_is_changed(killed_grid, pattern):
    state = next(killed_grid.glob(pattern))
    whole = _cut(state)
    try:
        before = _folder_bytes(killed_grid)
        proc = run_refused("--resume", str(killed_grid), "--storage-path", str(killed_grid.parent))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"{state} is cut (" in proc.stderr and "can't be read back" in proc.stderr
        assert _folder_bytes(killed_grid) == before  # nothing written, nothing removed
        # the fix it names: Tune's staged copy (this machine's Ray session folder) is the whole file
        fix = proc.stderr.split("Tune's staged copy is whole: ", 1)[1].split(" and resume again", 1)[0]
        argv = shlex.split(fix)
        assert argv[0] == "cp" and argv[2] == str(state), fix
        with open(argv[1], "rb") as staged:
            assert staged.read() == whole
    finally:
        state.write_bytes(whole)
    assert compat.unreadable_tune_state(killed_grid) == []


def test_a_cut_file_without_a_staged_copy_says_to_start_anew(killed_grid, monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no Ray session folders there
    state = next(killed_grid.glob("experiment_state-*.json"))
    whole = _cut(state)
    try:
        proc = run_refused("--resume", str(killed_grid), "--storage-path", str(killed_grid.parent))
    finally:
        state.write_bytes(whole)
    assert proc.returncode == 2 and "no whole copy is left on this machine: start a new run" in proc.stderr


def test_tune_failing_to_restore_raises_instead_of_starting_over(killed_grid, toy_ray, tmp_path):
    """Canary for compat.restore_or_raise: Tune 2.60 answers a state it can't read by starting the experiment over
    (trials with an empty config: ours fail at their first key); inside restore_or_raise it raises
    TuneRestoreFailed, and no trial is made."""
    import shutil

    from ray import tune

    copy = tmp_path / "cut"
    shutil.copytree(killed_grid, copy)
    _cut(next(copy.glob("basic-variant-state-*.json")))
    before = sorted(p.name for p in copy.iterdir() if p.is_dir())

    tuner = tune.Tuner.restore(str(copy), trainable=_report_once, resume_errored=True)
    with pytest.raises(compat.TuneRestoreFailed, match="UnpicklingError|EOFError"):
        with compat.restore_or_raise():
            tuner.fit()
    assert sorted(p.name for p in copy.iterdir() if p.is_dir()) == before
