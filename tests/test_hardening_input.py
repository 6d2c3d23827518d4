"""Issue 25's input side, each case through the real command line in this process (`tune_main7.main([...])`):
what a hostile try found accepted or misread, now refused in one line (exit 2, before anything is written) or
repaired with a warning. docs/bad-input.md lists them.

Nothing here starts Ray or builds a model: `no_launch` makes reaching the stand-in builder or Ray a failure, so a
refusal that came too late fails fast instead of running a grid; `fake_generation` replaces predict's model with one
that echoes its inputs, so what predict reads from test.csv is what the submission shows.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

import tune_main7
from tests.conftest import ROOT

TRIAL = "01_baseline_kobart_rtx3090"
YAML = f"{TRIAL}.yaml"


def _main(capsys, *args: str) -> tuple[int, str, str]:
    code = tune_main7.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def no_launch(monkeypatch):
    """A run that gets past its checks would build stand-ins and start Ray: here that is a failure, at once."""
    from trainables.driver import launch

    def reached(*args, **kwargs):
        raise AssertionError("the run got past its checks (stand-ins or Ray were next)")

    monkeypatch.setattr(launch, "prepare_models", reached)
    monkeypatch.setattr(launch, "start_ray", reached)


@pytest.fixture
def inputs(tmp_path) -> tuple[Path, Path]:
    """Copies of search_spaces/ and data/ to break, and the common flags of a run that writes only in tmp_path."""
    spaces, data = tmp_path / "spaces", tmp_path / "data"
    shutil.copytree(ROOT / "search_spaces", spaces)
    shutil.copytree(ROOT / "data", data)
    return spaces, data


def _run_flags(tmp_path: Path, spaces: Path, data: Path) -> list[str]:
    return ["--only", TRIAL, "--search-space", str(spaces), "--data-dir", str(data),
            "--storage-path", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache")]


def _as_crlf(source: Path, target: Path, newline: bytes) -> None:
    """The same CSV saved with other line endings: every line break, inside quoted dialogues too."""
    target.write_bytes(source.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", newline))


# ---------------------------------------------------------------------------------------------------
# 1. Windows (and old Mac) line endings: read as \n, one warning per file


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"], ids=["crlf", "cr"])
def test_line_endings_are_normalized_with_one_warning_per_file(tmp_path, newline, caplog):
    from trainables.data import read_split

    assert b"\r" not in (ROOT / "data" / "train.csv").read_bytes()
    for split in ("train", "dev", "test"):
        _as_crlf(ROOT / "data" / f"{split}.csv", tmp_path / f"{split}.csv", newline)
        caplog.clear()
        lf, other = read_split(ROOT / "data", split), read_split(tmp_path, split)
        pd.testing.assert_frame_equal(lf.frame, other.frame)
        assert lf.frame["dialogue"].str.contains("\n").all()  # the dialogues' own line breaks are kept
        warnings = [r.getMessage() for r in caplog.records if "line breaks" in r.getMessage()]
        assert len(warnings) == 1 and str(tmp_path / f"{split}.csv") in warnings[0], warnings
        assert f"{len(other.frame)} row(s)" in warnings[0]


def test_check_warns_about_line_endings_and_predict_reads_the_same_dialogues(tmp_path, inputs, capsys, caplog,
                                                                             fake_generation):
    spaces, data = inputs
    for split in ("train", "dev", "test"):
        _as_crlf(ROOT / "data" / f"{split}.csv", data / f"{split}.csv", b"\r\n")
    code, out, _ = _main(capsys, "check", *_run_flags(tmp_path, spaces, data))
    assert code == 0 and f"ok  {TRIAL}" in out
    assert sum("line breaks" in r.getMessage() and "test.csv" in r.getMessage() for r in caplog.records) == 1
    submissions = []
    for folder in (ROOT / "data", data):
        out_csv = tmp_path / f"{folder.parent.name}.csv"
        code, _, err = _main(capsys, "predict", "--checkpoint", str(fake_generation), "--data-dir", str(folder),
                             "--out", str(out_csv))
        assert code == 0, err
        submissions.append(pd.read_csv(out_csv, dtype=str, keep_default_na=False))
    pd.testing.assert_frame_equal(*submissions)
    assert not submissions[1]["summary"].str.contains("\r").any()


@pytest.fixture
def fake_generation(tmp_path, monkeypatch) -> Path:
    """A checkpoint folder whose model "summarizes" by echoing the dialogue: predict's whole path but the model (the
    family that trained it, with its loading and generation replaced)."""
    from trainables.config import load_experiment
    from trainables.results import predict

    checkpoint = tmp_path / "trial" / "checkpoint_000001"
    checkpoint.mkdir(parents=True)
    exp = load_experiment(ROOT / "search_spaces" / YAML)
    (checkpoint / "trial_meta.json").write_text(json.dumps({"experiment": exp.model_dump(), "model_path": "x"}))
    family_for = predict.family_for

    class Echo:
        def __init__(self, family):
            self.family = family

        def __getattr__(self, name):
            return getattr(self.family, name)

        def load_for_inference(self, *args, **kwargs):
            return None, None

        def generate(self, model, tokenizer, dialogues, *args, **kwargs):
            return list(dialogues)

    monkeypatch.setattr(predict, "family_for", lambda meta: Echo(family_for(meta)))
    return checkpoint


# ---------------------------------------------------------------------------------------------------
# 2. test.csv's fname: NA and null are ids; errors name the file's real lines


def test_fname_na_and_null_are_ids_not_missing(tmp_path, capsys, fake_generation):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test.csv").write_text('fname,dialogue\nNA,"#Person1#: 안녕\n#Person2#: 네"\nnull,대화\n',
                                                encoding="utf-8")
    out_csv = tmp_path / "sub.csv"
    code, _, err = _main(capsys, "predict", "--checkpoint", str(fake_generation), "--data-dir",
                         str(tmp_path / "data"), "--out", str(out_csv))
    assert code == 0, err
    assert pd.read_csv(out_csv, dtype=str, keep_default_na=False)["fname"].tolist() == ["NA", "null"]


@pytest.mark.parametrize("body,needles", [
    ('fname,dialogue\nt1,"a\nb\nc"\n,x\nt3,y\n', ["empty fname on line(s) 5"]),
    ('fname,dialogue\nt1,"a\nb"\n\nt2,"c\nd"\n  ,e\n', ["empty fname on line(s) 7"]),
    ('fname,dialogue\nNA,"a\nb"\nt2,c\nNA,d\n', ["duplicate fname value(s) NA", "line(s) 2, 5"]),
], ids=["after_a_multiline_dialogue", "after_a_blank_line", "duplicate_na"])
def test_test_csv_errors_name_the_lines_of_the_file(tmp_path, inputs, capsys, body, needles):
    spaces, data = inputs
    (data / "test.csv").write_text(body, encoding="utf-8")
    code, _, err = _main(capsys, "check", *_run_flags(tmp_path, spaces, data))
    _one_line_error(code, err, str(data / "test.csv"), *needles)


# ---------------------------------------------------------------------------------------------------
# 3. --name is one folder name under --storage-path


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/absolute-name", "a/b", "..", ".hidden", "two\nlines", "trailing\n", ""])
@pytest.mark.parametrize("command", ["run", "check", "search"])
def test_name_that_is_not_one_folder_name_is_refused_before_anything_is_written(tmp_path, inputs, capsys, no_launch,
                                                                               name, command):
    spaces, data = inputs
    flags = _run_flags(tmp_path, spaces, data)
    if command == "search":
        flags = ["kobart_baseline", "--samples", "2", *flags[2:]]  # search names one config, not --only
    code, _, err = _main(capsys, *([command] if command != "run" else []), *flags, "--name", name)
    _one_line_error(code, err, "--name", "one folder name", f"python tune_main7.py {command} --help")
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()
    assert not Path("/tmp/absolute-name").exists() and not (tmp_path.parent / "escaped").exists()


def test_a_plain_name_is_accepted():
    assert tune_main7.parse_args(["--name", "my-run_2.v1"]).name == "my-run_2.v1"


# ---------------------------------------------------------------------------------------------------
# 4. predict never replaces an existing file unless asked


def test_predict_refuses_an_existing_out_unless_overwrite(tmp_path, capsys, monkeypatch, fake_generation):
    from trainables.results import predict

    out_csv = tmp_path / "submission.csv"
    out_csv.write_text("my earlier submission\n")
    loaded, read_meta = [], predict.read_meta
    monkeypatch.setattr(predict, "read_meta", lambda *a, **k: loaded.append(a) or read_meta(*a, **k))
    code, _, err = _main(capsys, "predict", "--checkpoint", str(fake_generation), "--out", str(out_csv))
    _one_line_error(code, err, f"--out {out_csv}", "exists", "--overwrite", "another --out")
    assert out_csv.read_text() == "my earlier submission\n" and not loaded  # refused before the checkpoint is read
    code, _, err = _main(capsys, "predict", "--checkpoint", str(fake_generation), "--out", str(out_csv), "--overwrite")
    assert code == 0, err
    assert pd.read_csv(out_csv, dtype=str)["fname"].tolist() == pd.read_csv(ROOT / "data" / "test.csv", dtype=str)[
        "fname"].tolist()



# ---------------------------------------------------------------------------------------------------
# 5. Numeric flags: no nan, inf, negative or zero where they make no sense


@pytest.mark.parametrize("args,needle", [
    (["plan", "--gpu-memory", "nan"], "--gpu-memory"),
    (["plan", "--gpu-memory", "inf"], "--gpu-memory"),
    (["plan", "--gpu-memory", "-8"], "--gpu-memory"),
    (["plan", "--gpu-memory", "0"], "--gpu-memory"),
    (["plan", "--gpus", "0"], "--gpus"),
    (["--max-failures", "-5"], "--max-failures"),
    (["--max-failures", "1.5"], "--max-failures"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints"),
    (["--max-concurrent", "-1"], "--max-concurrent"),
    (["search", "kobart_baseline", "--samples", "-3"], "--samples"),
    (["search", "kobart_baseline", "--samples", "0"], "--samples"),
])
def test_numeric_flags_out_of_range_are_refused(tmp_path, capsys, no_launch, args, needle):
    code, out, err = _main(capsys, *args, "--storage-path", str(tmp_path / "r")) if args[0] != "plan" else \
        _main(capsys, *args)
    _one_line_error(code, err, needle, "got ")
    assert not out and not (tmp_path / "r").exists()


def test_zero_retries_and_a_finite_card_stay_valid():
    assert tune_main7.parse_args(["--max-failures", "0"]).max_failures == 0
    assert tune_main7.parse_args(["plan", "--gpu-memory", "48.5"]).gpu_memory == 48.5
    assert not math.isnan(tune_main7.parse_args(["plan", "--gpu-memory", "1e2"]).gpu_memory)


# ---------------------------------------------------------------------------------------------------
# 6. and 7. YAML: a key written twice, numbers that are not numbers


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _line_of(path: Path, text: str, nth: int = 1) -> int:
    lines = [i + 1 for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()) if line.strip() == text]
    return lines[nth - 1]


def test_a_key_written_twice_is_refused_with_both_lines(tmp_path, inputs, capsys):
    spaces, data = inputs
    path = spaces / YAML
    _edit(path, "  learning_rate: 3.0e-05", "  learning_rate: 3.0e-05\n  learning_rate: 1.0e-03")
    code, _, err = _main(capsys, "check", *_run_flags(tmp_path, spaces, data))
    first, second = _line_of(path, "learning_rate: 3.0e-05"), _line_of(path, "learning_rate: 1.0e-03")
    _one_line_error(code, err, str(path), "training.learning_rate", f"lines {first} and {second}")


def test_a_key_written_twice_in_a_search_yaml_or_its_base_is_refused(tmp_path, inputs, capsys, no_launch):
    spaces, data = inputs
    base = spaces / YAML
    search = tmp_path / "search.yaml"
    search.write_text(f"base: {base}\ntraining:\n  learning_rate: {{loguniform: [1e-5, 1e-3]}}\n", encoding="utf-8")
    _edit(base, "  seed: 42", "  seed: 42\n  seed: 7")
    flags = ["--samples", "2", "--storage-path", str(tmp_path / "r"), "--data-dir", str(data)]
    code, _, err = _main(capsys, "search", str(search), *flags)
    _one_line_error(code, err, str(base), "training.seed", "written twice")
    _edit(base, "  seed: 42\n  seed: 7", "  seed: 42")
    search.write_text(search.read_text() + "generation:\n  num_beams: 2\ngeneration:\n  num_beams: 3\n")
    code, _, err = _main(capsys, "search", str(search), *flags)
    _one_line_error(code, err, str(search), "generation", "lines 4 and 6")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("old,new,needles", [
    ("num_train_epochs: 4", "num_train_epochs: true", ["training.num_train_epochs", "an integer, not true/false"]),
    ("num_train_epochs: 4", 'num_train_epochs: "4"', ["training.num_train_epochs", "not text", "without quotes"]),
    ("learning_rate: 3.0e-05", "learning_rate: '3.0e-05'", ["training.learning_rate", "a number, not text"]),
    ("num_beams: 8", "num_beams: false", ["generation.num_beams", "not true/false"]),
    ("lora_dropout: 0.1", "lora_dropout: yes", ["qlora.lora_dropout", "not true/false"]),
], ids=["bool_epochs", "quoted_epochs", "quoted_lr", "bool_beams", "yes_dropout"])
def test_numbers_that_are_not_numbers_are_refused(tmp_path, inputs, capsys, old, new, needles):
    spaces, data = inputs
    _edit(spaces / YAML, old, new)
    code, _, err = _main(capsys, "check", *_run_flags(tmp_path, spaces, data))
    _one_line_error(code, err, str(spaces / YAML), *needles)


def test_an_exponent_without_a_dot_is_a_number(tmp_path, inputs, capsys):
    """YAML 1.1 (PyYAML) reads `1e-4` as text; a careful user means the number, as YAML 1.2 does."""
    from trainables.config import load_experiment

    spaces, data = inputs
    _edit(spaces / YAML, "learning_rate: 3.0e-05", "learning_rate: 1e-4")
    assert load_experiment(spaces / YAML).training.learning_rate == 1e-4
    code, _, err = _main(capsys, "check", *_run_flags(tmp_path, spaces, data))
    assert code == 0, err
    assert yaml.safe_load("x: 1e-4") == {"x": "1e-4"}  # the library's own loader is left as it is


# ---------------------------------------------------------------------------------------------------
# 8. A secret pasted into a config is refused before anything is written, and never echoed

PLANTED = "hf_plantedInAYamlValue0123456789abcd"


def _files_holding(folder: Path, secret: str, skip: set[Path]) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and p not in skip
            and secret.encode() in p.read_bytes()]


@pytest.mark.parametrize("where,value,needle", [
    ("description", f"tried with {PLANTED} on", "$HF_TOKEN"),
    ("description", "ghp_" + "A1b2" * 9, "a GitHub token"),
    ("description", "key " + "0123456789abcdef" * 2 + "01234567", "a W&B API key"),
    ("model.input_prefix", PLANTED, "$HF_TOKEN"),
], ids=["env_value", "github_form", "wandb_form", "nested_key"])
def test_a_secret_in_a_config_value_is_refused_and_never_echoed(tmp_path, inputs, capsys, monkeypatch, no_launch,
                                                               where, value, needle):
    spaces, data = inputs
    monkeypatch.setenv("HF_TOKEN", PLANTED)
    path = spaces / YAML
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if where == "description":
        raw["description"] = value
    else:
        raw["tokenizer"]["input_prefix"] = value
        where = "tokenizer.input_prefix"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    for command in ([], ["check"]):
        code, out, err = _main(capsys, *command, *_run_flags(tmp_path, spaces, data))
        _one_line_error(code, err, str(path), where, needle, "remove it")
        assert value not in out + err and PLANTED not in out + err
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()
    assert _files_holding(tmp_path, value, skip={path}) == []


def test_a_commit_hash_inside_a_path_is_not_taken_for_a_key(tmp_path, inputs, capsys):
    """A Hugging Face cache snapshot folder is named by its 40-hex commit: a model.checkpoint, not a W&B key."""
    spaces, data = inputs
    snapshot = "/models--digit82--kobart-summarization/snapshots/" + "0123456789abcdef" * 2 + "01234567"
    _edit(spaces / YAML, "checkpoint: digit82/kobart-summarization", f"checkpoint: {snapshot}")
    code, out, err = _main(capsys, "check", *_run_flags(tmp_path, spaces, data))  # smoke: the folder isn't opened
    assert code == 0 and f"ok  {TRIAL}: bart {snapshot}" in out, err


def test_a_secret_from_dotenv_in_a_search_base_is_refused(tmp_path, inputs, capsys, monkeypatch, no_launch):
    spaces, data = inputs
    secret = "svc-dotenv-planted-5e1d"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNE_MAIN7_TEST_API_KEY", "placeholder")
    monkeypatch.delenv("TUNE_MAIN7_TEST_API_KEY")  # set by .env below; monkeypatch removes it again afterwards
    (tmp_path / ".env").write_text(f"TUNE_MAIN7_TEST_API_KEY={secret}\n")
    _edit(spaces / YAML, 'description: "', f'description: "{secret} ')
    search = tmp_path / "search.yaml"
    search.write_text(f"base: {spaces / YAML}\ntraining:\n  warmup_ratio: {{uniform: [0.0, 0.2]}}\n")
    code, out, err = _main(capsys, "search", str(search), "--samples", "2", "--storage-path", str(tmp_path / "r"),
                           "--data-dir", str(data))
    _one_line_error(code, err, str(spaces / YAML), "description", "$TUNE_MAIN7_TEST_API_KEY")
    assert secret not in out + err and not (tmp_path / "r").exists()
    assert os.environ.get("TUNE_MAIN7_TEST_API_KEY") == secret  # it was read from .env: that is what was checked


# ---------------------------------------------------------------------------------------------------
# 9. check says ok only for configs that passed every check


def test_check_prints_no_ok_before_a_broken_local_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "kobart-local"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bart", ')  # cut short
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    raw = yaml.safe_load((ROOT / "search_spaces" / YAML).read_text(encoding="utf-8"))
    raw["model"]["checkpoint"] = str(folder)
    (spaces / YAML).write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    code, out, err = _main(capsys, "check", "--mode", "full", "--search-space", str(spaces))
    _one_line_error(code, err, str(folder), TRIAL)
    assert "ok " not in out, out


# ---------------------------------------------------------------------------------------------------
# 10. Each command's own help; usage errors in one line


OWN_FLAGS = {
    "run": (["--resume", "--max-failures", "--name"], ["--samples", "--gpu-memory", "--checkpoint", "--trial"]),
    "check": (["--only", "--mode", "--storage-path"], ["--resume", "--samples", "--checkpoint", "--dtype"]),
    "report": (["--metric", "--storage-path"], ["--mode", "--only", "--samples", "--out", "--name"]),
    "predict": (["--checkpoint", "--out", "--overwrite", "--data-dir"], ["--mode", "--only", "--trial", "--samples"]),
    "plan": (["--card", "--gpu-memory", "--gpus", "--calibrate"], ["--resume", "--samples", "--checkpoint"]),
    "search": (["--samples", "--resume", "--name"], ["--only", "--gpu-memory", "--checkpoint", "--trial"]),
    "export": (["--trial", "--all", "--adapter-only", "--dtype", "--out"], ["--mode", "--samples", "--checkpoint"]),
}


@pytest.mark.parametrize("command", list(OWN_FLAGS))
def test_each_command_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        tune_main7.main([command, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: tune_main7.py {'[run]' if command == 'run' else command} ")
    has, lacks = OWN_FLAGS[command]
    for flag in has:
        assert f"{flag} " in text or f"{flag}\n" in text, (command, flag)
    listed = text.split("\noptions:\n")[1]  # run's help opens with the overview of every command
    for flag in lacks:
        assert f"{flag} " not in listed and f"{flag}\n" not in listed, (command, flag)


def test_bare_help_is_runs_help_with_the_commands_overview(capsys):
    with pytest.raises(SystemExit):
        tune_main7.main(["--help"])
    text = capsys.readouterr().out
    assert "python tune_main7.py <command> --help" in text and "--max-failures" in text
    assert all(f"tune_main7.py {c}" in text for c in ("check", "report", "predict", "plan", "search", "export"))


@pytest.mark.parametrize("args,needles", [
    (["report", "--samples", "3"], ["--samples is a flag of search, not of report", "report --help"]),
    (["--mode", "fast"], ["--mode: invalid choice: 'fast'", "'smoke'", "run --help"]),
    (["--mode", "smoke", "check"], ["the command goes first: python tune_main7.py check", "run --help"]),
    (["export", "--dtype", "fp8"], ["--dtype: invalid choice", "export --help"]),
    (["--resume", "x", "--mode", "quick"], ["--mode can't be changed on --resume", "run --help"]),
    (["predict", "--no-such-flag"], ["unrecognized arguments: --no-such-flag", "predict --help"]),
])
def test_usage_errors_are_one_line_with_where_to_look(capsys, args, needles):
    code, out, err = _main(capsys, *args)
    _one_line_error(code, err, *needles)
    assert "usage:" not in out + err


INVOCATIONS = [  # README's, tests' and benchmarks' command lines: each still parses to what it meant
    (["--mode", "smoke"], "run", {"mode": "smoke"}),
    ([], "run", {"mode": "smoke", "max_failures": 2, "keep_checkpoints": 1}),
    (["--only", TRIAL, "03_high_learning_rate_rtx3090", "--mode", "smoke"], "run", {"only": [TRIAL, "03_high_learning_rate_rtx3090"]}),
    (["--resume"], "run", {"resume": "latest"}),
    (["--resume", "ray_results/x", "--storage-path", "/tmp/s"], "run", {"resume": "ray_results/x"}),
    (["--mode", "smoke", "--gpu", "--dashboard", "--wandb", "--wandb-project", "P"], "run", {"gpu": True, "wandb_project": "P"}),
    (["--mode", "full", "--address", "auto", "--storage-path", "s3://b/x"], "run", {"address": "auto"}),
    (["--mode", "quick", "--allow-cpu", "--name", "local"], "run", {"allow_cpu": True, "name": "local"}),
    (["check", "--mode", "full"], "check", {"mode": "full"}),
    (["check", "--only", TRIAL, "--storage-path", "/tmp/r", "--cache-dir", "/tmp/c"], "check", {"cache_dir": "/tmp/c"}),
    (["report"], "report", {"target": None}),
    (["report", "d", "--metric", "competition_score", "--storage-path", "/tmp"], "report", {"target": "d"}),
    (["predict", "d", "--out", "sub.csv"], "predict", {"target": "d", "out": "sub.csv", "data_dir": None}),
    (["predict", "--checkpoint", "c", "--data-dir", "/data"], "predict", {"checkpoint": "c", "data_dir": "/data"}),
    (["plan", "--mode", "quick", "--card", "rtx3090", "--data-dir", "/d"], "plan", {"card": "rtx3090"}),
    (["plan", "--gpu-memory", "48", "--gpus", "2"], "plan", {"gpu_memory": 48.0, "gpus": 2}),
    (["plan", "--calibrate"], "plan", {"calibrate": True}),
    (["search", "kobart_baseline", "--mode", "smoke", "--samples", "6"], "search", {"target": "kobart_baseline", "samples": 6}),
    (["search", "--resume", "DIR"], "search", {"resume": "DIR", "target": None}),
    (["export", "d", "--trial", "T", "--out", "m"], "export", {"trial": "T", "out": "m"}),
    (["export", "d", "--all", "--out", "m", "--adapter-only", "--dtype", "bf16"], "export", {"all": True, "dtype": "bf16"}),
]


@pytest.mark.parametrize("argv,command,expect", INVOCATIONS, ids=[" ".join(a) or "(none)" for a, _, _ in INVOCATIONS])
def test_existing_invocations_still_parse(argv, command, expect):
    args = tune_main7.parse_args(argv)
    assert args.command == command
    for key, value in expect.items():
        assert getattr(args, key) == value, (key, getattr(args, key))
    for shared in ("samples", "resume", "checkpoint", "only", "address", "metric"):  # what shared code reads
        assert hasattr(args, shared)


def test_help_imports_no_heavy_library():
    import subprocess
    import sys

    code = ("import sys, tune_main7\ntry:\n    tune_main7.main(['plan', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'ray', 'transformers', 'pandas', 'peft') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr
