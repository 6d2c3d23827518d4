"""The code's shape: one user-error base caught in one place, process settings only at entry points, no import
cycles between the project's modules, no module importing another's private names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tune_main7
from tests.conftest import ROOT
from trainables.errors import UserError

MODULES = {p.stem: p for p in (ROOT / "trainables").glob("*.py")}


def _user_error_classes() -> list[type]:
    import importlib

    found = []
    for name in MODULES:
        if name in ("wandb_logging", "telemetry", "speed", "export", "framing"):  # heavy imports; no error class
            continue
        module = importlib.import_module(f"trainables.{name}")
        found += [obj for obj in vars(module).values()
                  if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == module.__name__]
    return found


def test_every_project_error_is_a_user_error():
    classes = _user_error_classes()
    names = {c.__name__ for c in classes}
    assert {"ConfigError", "DataError", "UsageError", "SecretLeak", "ModelUnavailable", "PredictError"} <= names
    assert [c.__name__ for c in classes if not issubclass(c, UserError)] == []


def test_main_prints_one_line_and_exits_2_for_any_user_error(monkeypatch, capsys):
    from trainables.config import ConfigError

    def broken(args):
        raise ConfigError("a.yaml: first problem\n  b.yaml: second problem")

    monkeypatch.setattr(tune_main7, "dispatch", broken)
    assert tune_main7.main(["check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: a.yaml: first problem; b.yaml: second problem"


def test_a_bug_is_not_dressed_up_as_a_user_error(monkeypatch):
    def bug(args):
        raise KeyError("oops")

    monkeypatch.setattr(tune_main7, "dispatch", bug)
    with pytest.raises(KeyError):
        tune_main7.main(["check"])


def _project_imports(path: Path) -> tuple[set[str], list[str]]:
    """(project modules `path` imports anywhere in it, at module level or inside functions; private names it
    imports from them)."""
    deps, private = set(), []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "trainables":
            deps |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trainables."):
            deps.add(node.module.split(".")[1])
            private += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return deps - {path.stem}, private


def test_no_import_cycles_even_inside_functions_and_no_private_names_across_modules():
    graph, private = {}, []
    for name, path in MODULES.items():
        graph[name], p = _project_imports(path)
        private += [f"{name}: {x}" for x in p]
    assert private == []

    def visit(node: str, stack: list[str]) -> None:
        for dep in graph.get(node, ()):
            assert dep not in stack, " -> ".join(stack + [dep])
            visit(dep, stack + [dep])

    for name in graph:
        visit(name, [name])


def test_tests_and_benchmarks_use_no_private_name_of_the_project():
    """They reach the trial through its extension point (run.callbacks), not by replacing private functions."""
    import re

    modules = "|".join(sorted(MODULES))
    pattern = re.compile(rf"\b(?:{modules})\._[a-z]\w*|from trainables\.\w+ import [^\n]*\b_[a-z]\w*")
    found = [f"{path.relative_to(ROOT)}: {m}" for folder in ("tests", "benchmarks")
             for path in sorted((ROOT / folder).glob("*.py")) for m in pattern.findall(path.read_text())]
    assert found == []


def test_the_scheduler_and_predict_do_not_import_the_trainable():
    code = ("import sys, trainables.grid, trainables.predict, trainables.report, trainables.launch; "
            "print(sorted(m for m in sys.modules if m in ('trainables.seq2seq', 'transformers', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_builders_leave_the_process_alone():
    """Only trainables/process.py (and the W&B key hand-over, the .env loader) writes os.environ, warning filters
    or library verbosity."""
    allowed = {"process", "wandb_logging", "secrets"}
    offenders = []
    for name, path in MODULES.items():
        if name in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            text = ast.unparse(node) if isinstance(node, (ast.Assign, ast.Call)) else ""
            if any(s in text for s in ("os.environ[", "os.environ.setdefault", "warnings.filterwarnings",
                                       "set_verbosity", "disable_progress_bar", "logging.basicConfig")):
                offenders.append(f"{name}:{node.lineno}: {text[:80]}")
    assert offenders == []
