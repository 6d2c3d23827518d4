"""The code's shape: one user-error base caught in one place, process settings only at entry points, no import
cycles between the project's modules, no module importing another's private names."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tune_main7
from tests.conftest import ROOT
from trainables.errors import UserError


def _dotted(path: Path) -> str:
    """A module's dotted name below `trainables` ("config", "driver.launch", "trial.families" for its __init__.py)."""
    parts = path.relative_to(ROOT / "trainables").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# Every module of the package, subpackages' __init__.py included (they hold code: the family protocol, the speed
# layer's hooks), by its dotted name below `trainables`.
MODULES = {_dotted(p): p for p in sorted((ROOT / "trainables").rglob("*.py")) if _dotted(p)}


def _user_error_classes() -> list[type]:
    import importlib

    found = []
    for name in MODULES:
        if name.rsplit(".", 1)[-1] in ("wandb_logging", "telemetry", "speed", "export", "framing"):  # heavy imports; no error class
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
    imports from them). Imports under `if TYPE_CHECKING:` are for annotations only: they never run."""
    deps, private = set(), []
    me = _dotted(path)
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if not (isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trainables"):
            continue
        package = node.module.partition(".")[2]
        for alias in node.names:
            submodule = f"{package}.{alias.name}" if package else alias.name
            if submodule in MODULES:  # `from trainables.trial import speed`
                deps.add(submodule)
            else:
                deps.add(package)
                private += [f"{node.module}.{alias.name}"] if alias.name.startswith("_") else []
    return deps - {me, ""}, private


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

    modules = "|".join(sorted({m.rsplit(".", 1)[-1] for m in MODULES}))
    pattern = re.compile(rf"\b(?:{modules})\._[a-z]\w*|from trainables\.[\w.]+ import [^\n]*\b_[a-z]\w*")
    found = [f"{path.relative_to(ROOT)}: {m}" for folder in ("tests", "benchmarks")
             for path in sorted((ROOT / folder).glob("*.py")) for m in pattern.findall(path.read_text())]
    assert found == []


def test_the_scheduler_and_predict_do_not_import_the_trainable():
    code = ("import sys, trainables.driver.grid, trainables.results.predict, trainables.results.report, trainables.driver.launch; "
            "print(sorted(m for m in sys.modules if m in ('trainables.trial.recipe', 'transformers', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


PROCESS_WRITES = ("os.environ[", "os.environ.setdefault", "os.environ.pop", "os.environ.update",
                  "os.environ.clear", "os.putenv", "os.unsetenv", "warnings.filterwarnings", "set_verbosity",
                  "disable_progress_bar", "logging.basicConfig", "signal.signal(")


def _process_writes(path: Path) -> list[str]:
    """Assignments, deletions and calls in `path` that change the process's environment, warning filters, library
    verbosity or signal handlers."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        text = ast.unparse(node) if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete, ast.Call)) else ""
        if isinstance(node, ast.Assign) and not any("os.environ" in ast.unparse(t) for t in node.targets):
            text = ""  # `x = os.environ["A"]` reads
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get",):
            text = ""
        if any(s in text for s in PROCESS_WRITES):
            found.append(f"{node.lineno}: {text[:80]}")
    return found


def test_builders_leave_the_process_alone():
    """Only trainables/process.py writes os.environ, warning filters or library verbosity (secrets, W&B settings
    and the rest reach it as values); only launch.handled_signals replaces signal handlers, and restores them.
    The benchmarks ask process.py too."""
    allowed = {"process": (), "driver.launch": ("signal.signal(",)}
    paths = {**MODULES, **{f"benchmarks/{p.name}": p for p in sorted((ROOT / "benchmarks").glob("*.py"))}}
    offenders = [f"{name}:{w}" for name, path in paths.items() for w in _process_writes(path)
                 if name != "process" and not any(s in w for s in allowed.get(name, ()))]
    assert offenders == []


def test_the_process_write_scan_finds_what_it_looks_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nos.environ['A'] = '1'\nos.environ.setdefault('B', '2')\ndel os.environ['C']\n"
                      "x = os.environ['D']\nos.environ.get('E')\nsignal.signal(2, f)\n")
    assert sorted(w.split(":")[0] for w in _process_writes(sample)) == ["2", "3", "4", "7"]



def test_readme_leads_with_the_two_commands_and_stays_short():
    """The README is the newcomer's door: the two commands first, a short tour, details in docs/."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text) < 15_000, f"README.md is {len(text)} characters; move details to a page under docs/"
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Two commands", sections
    for page in re.findall(r"\]\((docs/[\w.-]+\.md)\)", text):
        assert (ROOT / page).is_file(), f"README links {page}, which does not exist"


# Libraries whose private names and internal modules only trainables/compat.py may touch.
LIBRARIES = ("transformers", "peft", "bitsandbytes", "ray", "torch")
INTERNAL_MODULES = ("peft.utils.other", "peft.tuners", "bitsandbytes.functional", "transformers.cache_utils",
                    "transformers.generation.utils", "ray.tune.execution")


def _internal(module: str) -> bool:
    """Whether `module` (dotted) is a private or internal module of one of LIBRARIES."""
    parts = module.split(".")
    return parts[0] in LIBRARIES and (any(p.startswith("_") for p in parts[1:])
                                      or any(module == m or module.startswith(m + ".") for m in INTERNAL_MODULES))


def _private_touches(path: Path) -> list[str]:
    """Where `path` imports a private name or internal module of LIBRARIES, or names one of compat.PRIVATE_NAMES
    (as an attribute, a name, a definition or a string such as getattr's)."""
    from trainables.compat import PRIVATE_NAMES

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if _internal(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
            if _internal(node.module):
                found.append(f"{node.lineno}: from {node.module}")
            found += [f"{node.lineno}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value]
        found += [f"{node.lineno}: {n}" for n in names if n in PRIVATE_NAMES]
    return found


def test_only_compat_touches_library_internals():
    """transformers/peft/bitsandbytes/Ray/torch private names and internal modules go through trainables/compat.py,
    where each has a canary (tests/test_compat.py) that names the library version when an upgrade moves it."""
    paths = [p for p in MODULES.values() if p.name != "compat.py"] + sorted((ROOT / "benchmarks").glob("*.py"))
    found = [f"{p.relative_to(ROOT)}:{touch}" for p in paths for touch in _private_touches(p)]
    assert found == [], "route these through trainables/compat.py (one named function each, with a canary)"


def test_the_private_api_scan_finds_what_it_looks_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from ray.air.integrations.wandb import _WandbLoggingActor\nimport ray._private.utils\n"
                      "from peft.utils.other import X\ntrainer.model_accepts_loss_kwargs = False\n"
                      "getattr(cfg, '_attn_implementation')\nfrom transformers import AutoTokenizer\n")
    assert [t.split(":")[0] for t in _private_touches(sample)] == ["1", "1", "2", "3", "4", "5"]


def _long_functions(path: Path, limit: int = 50) -> list[tuple[int, str, int]]:
    """(line, name, length) of each function of `path` (methods and nested ones included) longer than `limit`
    lines, counted from its `def` line (decorators excluded) to its last line."""
    return [(node.lineno, node.name, node.end_lineno - node.lineno + 1)
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit]


def test_no_function_is_longer_than_50_lines():
    """A newcomer reads a function at once: the package's and the entry point's stay within 50 lines."""
    paths = [*MODULES.values(), ROOT / "tune_main7.py"]
    found = [f"{p.relative_to(ROOT)}:{line} {name} ({n} lines)" for p in paths for line, name, n in _long_functions(p)]
    assert found == []


def test_the_length_check_counts_from_the_def_line(tmp_path):
    sample = tmp_path / "sample.py"
    body = "\n".join(f"    x{i} = {i}" for i in range(49))
    sample.write_text(f"@decorator\ndef fits():\n{body}\n\n\ndef too_long():\n{body}\n    x = 0\n")
    assert _long_functions(sample) == [(54, "too_long", 51)]  # fits: 50 lines plus its decorator


def _missing_project_imports(path: Path) -> list[str]:
    """`from trainables.x import y` / `import trainables.x` in `path` where neither trainables/x.py (or its
    package) nor a module y below it exists: an import left behind by a move, found before a run reaches it."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trainables":
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names if a.name.split(".")[0] == "trainables"]
        else:
            continue
        for module in modules:
            relative = Path(*module.split(".")[1:]) if "." in module else Path()
            if not ((ROOT / "trainables" / relative).with_suffix(".py").is_file()
                    or (ROOT / "trainables" / relative / "__init__.py").is_file()):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {module}")
    return found


def test_every_project_import_names_a_module_that_exists():
    """Imports inside functions run only when a trial gets there: a moved module must not leave one behind."""
    paths = [*MODULES.values(), ROOT / "tune_main7.py", *sorted((ROOT / "benchmarks").glob("*.py")),
             *sorted((ROOT / "tests").glob("*.py"))]
    assert [m for p in paths for m in _missing_project_imports(p)] == []
