"""Bad input stops the real command line before any trial starts: exit code != 0, one message naming the
file or key and saying how to fix it, no traceback, and the results folder left exactly as it was.

Table-driven: each case copies the shipped search_spaces/ and data/ into a tmp folder, breaks one thing,
and runs `tune_main7.py` (default command `run`, smoke mode unless the case says otherwise).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import ROOT, run_cli, run_refused

YAML = "01_baseline_kobart_rtx3090.yaml"
ONLY = ["--only", "01_baseline_kobart_rtx3090"]  # should a case wrongly pass, it starts one trial, not seven


@dataclass
class Case:
    id: str
    breaks: Callable[[Path, Path], None] | None  # (search_space_dir, data_dir) -> None
    expect: list[str]  # substrings of stderr: the file/key and the fix hint
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    rc: int | None = None  # exact exit code, where it matters (argparse: 2)


def _edit_yaml(old: str, new: str) -> Callable[[Path, Path], None]:
    def edit(spaces: Path, data: Path) -> None:
        path = spaces / YAML
        text = path.read_text(encoding="utf-8")
        assert old in text, old
        path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return edit


def _write(rel: str, content: bytes | str, where: str = "data") -> Callable[[Path, Path], None]:
    def write(spaces: Path, data: Path) -> None:
        path = (data if where == "data" else spaces) / rel
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return write


def _remove(rel: str) -> Callable[[Path, Path], None]:
    def remove(spaces: Path, data: Path) -> None:
        (data / rel).unlink()
    return remove


def _empty_spaces(spaces: Path, data: Path) -> None:
    for f in spaces.iterdir():
        if f.is_file():  # search_spaces/search/ stays: the grid never reads it, so the folder is still empty
            f.unlink()


def _missing_spaces(spaces: Path, data: Path) -> None:
    shutil.rmtree(spaces)


def _duplicate(spaces: Path, data: Path) -> None:
    shutil.copy(spaces / YAML, spaces / "99_copy.yaml")


def _drop_column(column: str) -> Callable[[Path, Path], None]:
    def drop(spaces: Path, data: Path) -> None:
        import pandas as pd

        frame = pd.read_csv(data / "dev.csv", dtype=str)
        frame.drop(columns=[column]).to_csv(data / "dev.csv", index=False)
    return drop


CASES = [
    Case("yaml_syntax", _edit_yaml("  architecture: bart", "  architecture: [bart"), [YAML, "YAML syntax error", "line"]),
    Case("yaml_not_utf8", _write(YAML, "name: x\ndescription: \"베이스라인\"\n".encode("cp949"), "spaces"),
         [YAML, "not UTF-8", "save it as UTF-8"]),
    Case("unknown_key", _edit_yaml("  seed: 42", "  seed: 42\n  sead: 43"), [YAML, "training.sead", "unknown key", "spelling"]),
    Case("negative_lr", _edit_yaml("learning_rate: 3.0e-05", "learning_rate: -3.0e-05"),
         [YAML, "training.learning_rate", "greater than 0"]),
    Case("zero_batch", _edit_yaml("per_device_train_batch_size: 8", "per_device_train_batch_size: 0"),
         [YAML, "training.per_device_train_batch_size", "greater than 0"]),
    Case("wrong_type", _edit_yaml("num_train_epochs: 4", "num_train_epochs: four"),
         [YAML, "training.num_train_epochs", "integer"]),
    Case("unknown_scheduler", _edit_yaml("lr_scheduler_type: linear", "lr_scheduler_type: linaer"),
         [YAML, "training.lr_scheduler_type", "linaer", "use one of", "cosine"]),
    Case("unknown_architecture", _edit_yaml("architecture: bart", "architecture: gpt2"),
         [YAML, "model.architecture", "'bart'"]),
    Case("duplicate_names", _duplicate, ["99_copy.yaml", "01_baseline_kobart_rtx3090", "names must be unique"]),
    Case("empty_search_space", _empty_spaces, ["spaces", "no *.yaml experiment files", "add one per experiment"]),
    Case("missing_search_space", _missing_spaces, ["spaces", "no such folder", "--search-space"]),
    Case("missing_data_file", _remove("train.csv"), ["train.csv", "file not found", "--data-dir"]),
    Case("missing_column", _drop_column("summary"), ["dev.csv", "missing column(s) summary", "Expected fname, dialogue, summary"]),
    Case("empty_csv", _write("train.csv", b""), ["train.csv", "file is empty", "header line"]),
    Case("header_only_csv", _write("dev.csv", "fname,dialogue,summary,topic\n"), ["dev.csv", "no rows with a non-empty"]),
    Case("all_rows_empty", _write("dev.csv", "fname,dialogue,summary,topic\nd0,,요약,t\nd1,대화,,t\n"),
         ["dev.csv", "no rows with a non-empty dialogue and summary"]),
    Case("csv_not_utf8", _write("dev.csv", "fname,dialogue,summary,topic\nd0,안녕하세요,인사,t\n".encode("cp949")),
         ["dev.csv", "not UTF-8", "re-save the file as UTF-8"]),
    Case("model_unavailable", None, ["digit82/kobart-summarization", "can't be loaded", "--mode smoke", "HF_TOKEN"],
         args=["--mode", "quick", "--allow-cpu"], env={"HF_HUB_OFFLINE": "1"}),
    Case("quick_without_gpu", None, ["--mode quick", "needs a CUDA GPU", "--mode smoke", "--allow-cpu"], args=["--mode", "quick"]),
    Case("full_without_gpu", None, ["--mode full", "needs a CUDA GPU", "--mode smoke"], args=["--mode", "full"]),
    Case("unknown_mode", None, ["--mode", "invalid choice", "'smoke'"], args=["--mode", "fast"], rc=2),
    Case("bad_keep_checkpoints", None, ["--keep-checkpoints", "at least 1"], args=["--keep-checkpoints", "0"], rc=2),
    Case("unknown_only", None, ["--only", "nope", "known:"], args=["--only", "nope"]),
    Case("resume_foreign_dir", None, ["not an experiment started by tune_main7.py", "pass the folder printed"],
         args=["--resume", "{foreign}"]),
    Case("resume_nothing", None, ["nothing to resume", "{storage}"], args=["--resume"]),
]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_stops_before_any_trial(case: Case, tmp_path: Path):
    if gpu_present() and case.id.endswith("without_gpu"):
        pytest.skip("this machine has a GPU")
    spaces, data, storage, foreign = tmp_path / "spaces", tmp_path / "data", tmp_path / "results", tmp_path / "foreign"
    shutil.copytree(ROOT / "search_spaces", spaces)
    shutil.copytree(ROOT / "data", data)
    storage.mkdir()
    (storage / "earlier-results.txt").write_text("results of an earlier run\n")
    foreign.mkdir()
    (foreign / "experiment_state.json").write_text("{}")  # someone else's folder: not ours to resume
    if case.breaks:
        case.breaks(spaces, data)
    before, before_foreign = _snapshot(storage), _snapshot(foreign)

    subst = {"{foreign}": str(foreign), "{storage}": str(storage)}
    args = [subst.get(a, a) for a in case.args]
    if "--only" not in args:
        args += ONLY
    proc = run_refused(*args, "--search-space", str(spaces), "--data-dir", str(data), "--storage-path", str(storage),
                       "--cache-dir", str(tmp_path / "cache"), env=case.env)

    message = proc.stderr
    assert proc.returncode != 0, f"{case.id}: exit code 0\n{proc.stdout[-2000:]}\n{message[-2000:]}"
    if case.rc is not None:
        assert proc.returncode == case.rc
    assert "Traceback" not in message, message[-3000:]
    for want in case.expect:
        want = subst.get(want, want)
        assert want in message, f"{case.id}: {want!r} not in:\n{message[-2000:]}"
    assert _snapshot(storage) == before, "the results folder was touched"
    assert _snapshot(foreign) == before_foreign
    assert not (tmp_path / "cache").exists() or case.id == "model_unavailable", "stand-ins built before the error"
    assert "Experiment " not in proc.stdout and "Started a local Ray instance" not in proc.stdout + message


def gpu_present() -> bool:
    import torch

    return torch.cuda.is_available()


def test_rows_with_empty_text_are_dropped_with_a_count(tmp_path: Path):
    """Documented behaviour, not an error: rows with an empty or missing dialogue/summary are dropped, and a
    warning says how many (checked with `check`, which reads the data as a run does and starts nothing)."""
    data = tmp_path / "data"
    shutil.copytree(ROOT / "data", data)
    with open(data / "dev.csv", "a", encoding="utf-8") as f:
        f.write('dev_empty1,"",요약입니다,t\ndev_empty2,대화입니다,,t\ndev_empty3,"   ",요약,t\n')
    proc = run_cli("check", "--data-dir", str(data), "--only", "01_baseline_kobart_rtx3090", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dev.csv: dropped 3 row(s) with an empty or missing dialogue or summary" in proc.stderr


@pytest.mark.slow  # a few trainings or CLI runs: ~10 s
def test_report_predict_resume_on_folders_that_are_not_experiments(tmp_path):
    """A plain folder, or one with our marker but no Tune state (a run killed at once): one-line errors."""
    plain = tmp_path / "plain"
    plain.mkdir()
    early = tmp_path / "killed-early"
    early.mkdir()
    (early / "tune_main7.json").write_text('{"mode": "smoke", "use_gpu": false}')
    for args, needle in ((["report", str(plain)], "is not an experiment started by tune_main7.py"),
                         (["predict", str(plain)], "is not an experiment started by tune_main7.py"),
                         (["report", str(early)], "has no Tune state yet"),
                         (["--resume", str(early)], "has no Tune state to resume")):
        proc = run_refused(*args, "--storage-path", str(tmp_path))
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert needle in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr[-2000:])


def test_predict_with_an_unreadable_trial_meta(tmp_path):
    checkpoint = tmp_path / "checkpoint_000000"
    checkpoint.mkdir()
    (checkpoint / "trial_meta.json").write_text("{truncated")
    proc = run_cli("predict", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "s.csv"), timeout=120)
    assert proc.returncode == 2 and "unreadable" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_an_architecture_that_is_not_the_checkpoints_family_is_refused_before_anything_starts(tmp_path):
    """model.architecture t5 on a BART folder would decide LoRA targets, precision and framing for the wrong model;
    found by reading the folder's config.json, before Ray starts or a weight loads."""
    import json

    import yaml

    folder = tmp_path / "bart-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bart"}))
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    cfg = yaml.safe_load((ROOT / "search_spaces" / "02_eenzeenee_t5_rtx3090.yaml").read_text(encoding="utf-8"))
    cfg["model"]["checkpoint"] = str(folder)
    (spaces / "t5_on_bart.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    proc = run_cli("check", "--mode", "full", "--search-space", str(spaces), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is a bart model, but model.architecture says t5" in lines[0], proc.stderr
    assert "set model.architecture to bart" in lines[0]
    from trainables.trial.models import folder_architecture_problem

    assert folder_architecture_problem(str(folder), "bart") is None  # the same folder under its own family passes


def test_mt5_and_t5_are_one_family_for_the_architecture_check():
    from trainables.trial.families.seq2seq.checks import architecture_problem

    assert architecture_problem("mt5", "t5", "x") is None and architecture_problem("t5", "mt5", "x") is None
    assert architecture_problem("bart", "bart", "x") is None and architecture_problem("bart", None, "x") is None
    assert "is a mt5 model" in architecture_problem("bart", "mt5", "x")
