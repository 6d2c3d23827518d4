#!/usr/bin/env python3
"""Run the seven Korean dialogue-summarization experiments as one Ray Tune grid.

  python tune_main7.py --mode smoke          # offline: stand-in models, sample data, CPU (minutes)
  python tune_main7.py --mode quick          # real models, 1 epoch each, 1 GPU per trial
  python tune_main7.py --mode full           # real models, each config's epochs
  python tune_main7.py --resume [DIR]        # continue an interrupted experiment (latest by default)
  python tune_main7.py check [--mode M]      # validate configs and data, start nothing
  python tune_main7.py report [DIR]          # result table and plots of an experiment (latest by default)
  python tune_main7.py predict [DIR]         # submission.csv from the best checkpoint (or --checkpoint PATH)
  python tune_main7.py plan [--mode full] [--card h100|--gpu-memory GB]   # memory and time per trial, no GPU
  python tune_main7.py search CONFIG --samples N [--mode M]   # hyperparameter search around one config
  python tune_main7.py export [DIR] --out M  # the best trial's best checkpoint as a standalone HF model folder

Heavy libraries (torch, ray, transformers) are imported only once a command needs them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainables.errors import UserError  # no dependency: --help stays instant

HERE = Path(__file__).resolve().parent
COMMANDS = ("run", "check", "report", "predict", "plan", "search", "export")
# The flags a run takes; `check` takes them too (all but --resume), so the command line of a run can be checked as is.
RUN = ("run", "check", "search")
CONFIGS = ("run", "check", "plan", "search")  # commands that read the YAMLs and the data
RESULTS = ("report", "predict", "export")  # commands that read an experiment
ABOUT = {
    "run": "Run the grid: one Ray Tune trial per YAML of --search-space (the default command).",
    "check": "Validate the configs and the data (and where a run would write), start nothing; takes a run's flags.",
    "report": "The result tables and plots of an experiment (TARGET, default: the latest under --storage-path).",
    "predict": "submission.csv from the best checkpoint of an experiment (TARGET), or from --checkpoint.",
    "plan": "Predicted memory and time per config on a card, without a GPU (--mode full unless given).",
    "search": "A hyperparameter search around one config (TARGET): --samples N variants, Optuna TPE and ASHA.",
    "export": "The best trial's best checkpoint (of TARGET) as a standalone Hugging Face model folder, --out.",
}


def _at_least(least: int):
    """An argparse type: a whole number of at least `least` (--max-failures 0 is no retry; --samples 0 is nothing)."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least {least}, got {text!r}")
        return value

    return whole_number


_positive_int, _count = _at_least(1), _at_least(0)


def _gigabytes(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a card's memory in GB, a number above 0, got {text!r}")
    return value


def _experiment_name(text: str) -> str:
    """One plain folder name under --storage-path, by the rule of the YAMLs' `name:` (no path, no `..`)."""
    import re

    from trainables.config import NAME_MAX_LENGTH, NAME_PATTERN

    if not re.fullmatch(NAME_PATTERN, text) or len(text) > NAME_MAX_LENGTH:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not one folder name: use letters, digits, '_', '.' and '-' (starting with a letter or "
            f"digit, at most {NAME_MAX_LENGTH}); the experiment goes under --storage-path, which says where")
    return text


def _config_flags(modes, metrics, tokenizations) -> list[tuple]:
    """(flags, commands, help, argparse keywords) of the flags that choose and shape the configs."""
    return [
        (("--mode",), (*CONFIGS,), {"*": "smoke (default): offline stand-ins on CPU; quick: real models, 1 epoch; "
         "full: real models", "plan": "the mode to plan (default: full; smoke plans as full)"}, {"choices": modes}),
        (("--search-space",), (*CONFIGS,), {"*": "folder of experiment YAMLs", "search": "folder where a config "
         "name is looked up (and search/ in it)"}, {"default": str(HERE / "search_spaces")}),
        (("--only",), ("run", "check", "plan"), "run only these experiments", {"nargs": "+", "metavar": "NAME"}),
        (("--data-dir",), (*CONFIGS, "predict"), {"*": "folder with train.csv, dev.csv, test.csv (default: data/)",
         "predict": "folder with the test.csv to summarize (default: the folder the experiment trained on)"}, {}),
        (("--metric",), (*CONFIGS, *RESULTS), {"*": "the run's one metric: early stopping, the checkpoints kept, the "
         "best trial (sets metric.best_metric of every config; default the configs' own, competition_score unless "
         "set)", **{c: "rank the trials and checkpoints by this metric (default: the one the experiment ran with)"
                    for c in RESULTS}}, {"choices": metrics}),
        (("--tokenization",), (*CONFIGS,), "ROUGE tokenization for every experiment (default: each YAML's "
         "metric.tokenization, whitespace unless set)", {"choices": tokenizations}),
    ]


def _run_flags() -> list[tuple]:
    """(flags, commands, help, argparse keywords) of the flags that start, place and keep a run."""
    return [
        (("--resume",), ("run", "search"), "continue an interrupted experiment (default: the latest under "
         "--storage-path)", {"nargs": "?", "const": "latest", "metavar": "DIR"}),
        (("--storage-path",), (*RUN, *RESULTS), {"*": "where Tune writes results: a folder (shared/mounted on a "
         "cluster) or a URI such as s3://bucket/x", **{c: "where the latest experiment is looked for" for c in RESULTS}},
         {"default": str(HERE / "ray_results")}),
        (("--name",), RUN, "experiment folder name, new, one plain folder name (default: main7-<mode>-<timestamp>-"
         "<random>)", {"type": _experiment_name}),
        (("--cache-dir",), RUN, "where stand-in models are built (default: ~/.cache/tune_main7)", {}),
        (("--max-concurrent",), RUN, "trials at once (default: the GPUs, the cluster's with --address, or CPUs in "
         "smoke)", {"type": _positive_int, "metavar": "N"}),
        (("--max-failures",), RUN, "retries of a failed trial from its checkpoint (0: none)",
         {"type": _count, "default": 2, "metavar": "N"}),
        (("--keep-checkpoints",), RUN, "per trial, keep the N best checkpoints by --metric plus always the latest "
         "(default 1: the best and the latest, at most two folders)", {"type": _positive_int, "default": 1, "metavar": "N"}),
        (("--allow-cpu",), RUN, "run the trials on the CPU even in quick/full mode (real models: very slow, one at "
         "a time)", {"action": "store_true"}),
        (("--gpu",), RUN, "smoke mode on GPUs: stand-in models, but one GPU per trial (checks the GPU stack offline)",
         {"action": "store_true"}),
        (("--address",), RUN, "connect to an existing Ray cluster (auto, host:port or ray://host:port; RAY_ADDRESS "
         "works too)", {}),
        (("--dashboard",), RUN, "start the Ray dashboard on 127.0.0.1", {"action": "store_true"}),
        (("--wandb",), RUN, "log each trial to Weights & Biases (offline unless WANDB_API_KEY is set; "
         "TUNE_MAIN7_WANDB=1 works too)", {"action": "store_true"}),
        (("--wandb-project",), RUN, "W&B project (default: $WANDB_PROJECT or dialogue-summarization-tune)", {}),
        (("--no-pack",), (*RUN, "plan"), "one trial per GPU even where the plan says several fit one card",
         {"action": "store_true"}),
        (("--samples",), ("search",), "how many configs to sample and train", {"type": _positive_int, "metavar": "N"}),
    ]


def _command_flags() -> list[tuple]:
    """(flags, commands, help, argparse keywords) of the flags of one command each."""
    return [
        (("--card",), ("plan",), "the card to plan for (default: this machine's GPU, else h100)",
         {"choices": ("rtx3090", "a100-40", "a100-80", "h100", "h200")}),
        (("--gpu-memory",), ("plan",), "a card with this much memory", {"type": _gigabytes, "metavar": "GB"}),
        (("--gpus",), ("plan",), "GPUs to plan for (default: this machine's, else 1)",
         {"type": _positive_int, "metavar": "N"}),
        (("--calibrate",), ("plan",), "measure this machine's GPU on the configs (a few real-size steps each) and "
         "write trainables/driver/calibration/<card>.json", {"action": "store_true"}),
        (("--checkpoint",), ("predict",), "this checkpoint folder instead of the best trial's best", {}),
        (("--out",), ("predict",), "the submission CSV, new (default: <experiment>/submission.csv)", {}),
        (("--overwrite",), ("predict",), "replace --out if it exists (otherwise an existing file is refused)",
         {"action": "store_true"}),
        (("--out",), ("export",), "the new model folder (with --all: one subfolder per trial)", {}),
        (("--trial",), ("export",), "this trial (config name) instead of the best", {"metavar": "NAME"}),
        (("--all",), ("export",), "every trial that has a checkpoint", {"action": "store_true"}),
        (("--adapter-only",), ("export",), "just the LoRA adapter and tokenizer", {"action": "store_true"}),
        (("--dtype",), ("export",), "the merged weights' dtype", {"choices": ("fp32", "bf16"), "default": "fp32"}),
    ]


TARGET_HELP = {
    "report": "the experiment folder (default: the latest under --storage-path)",
    "predict": "the experiment folder (default: the latest), or a checkpoint or exported model folder",
    "export": "the experiment folder (default: the latest under --storage-path)",
    "search": "the config to search around: a name in search_spaces/search/ or search_spaces/, or a YAML path",
}


class CommandLineError(UserError):
    """A flag or argument argparse refused, with where the command's flags are listed."""


class _Parser(argparse.ArgumentParser):
    """A usage error is one line, `error: ...` and where the flags are listed, exit code 2 (not argparse's usage
    block before the line that matters): raised as a UserError, which main() reports like any other."""

    def __init__(self, command: str, flag_owners: dict[str, list[str]], **kwargs):
        super().__init__(**kwargs)
        self.command, self.flag_owners = command, flag_owners

    def error(self, message: str):
        if message.startswith("unrecognized arguments"):
            message += self._whose(message.split(":", 1)[1].split())
        message = message.removeprefix("argument ")  # "--mode: invalid choice: ..."
        raise CommandLineError(f"{message}; see python tune_main7.py {self.command} --help")

    def _whose(self, tokens: list[str]) -> str:
        """Where unrecognized arguments belong: another command's flag, or a command written after the flags."""
        for token in tokens:
            owners = self.flag_owners.get(token.split("=")[0])
            if owners:
                return f" ({token.split('=')[0]} is a flag of {' and '.join(owners)}, not of {self.command})"
            if token in COMMANDS:
                return f" (the command goes first: python tune_main7.py {token} ...)"
        return ""


def _parser(command: str, table: list[tuple]) -> _Parser:
    owners: dict[str, list[str]] = {}
    for flags, commands, _, _ in table:
        for flag in flags:
            owners.setdefault(flag, []).extend(c for c in commands if c not in owners.get(flag, []))
    overview = __doc__ + "\nEach command lists its own flags: python tune_main7.py <command> --help\n\n"
    parser = _Parser(command, owners, prog=f"tune_main7.py {'[run]' if command == 'run' else command}",
                     description=(overview if command == "run" else "") + ABOUT[command],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if command in TARGET_HELP:
        parser.add_argument("target", nargs="?", help=TARGET_HELP[command])
    for flags, commands, text, kwargs in table:
        if command in commands and not (command == "check" and flags == ("--resume",)):
            text = text.get(command, text["*"]) if isinstance(text, dict) else text
            parser.add_argument(*flags, help=text, **kwargs)
    return parser


def _defaults(table: list[tuple]) -> argparse.Namespace:
    """Every flag's attribute, at its default: commands share code that reads flags another command has not."""
    names = {flags[0].lstrip("-").replace("-", "_"): kwargs.get("default", False if kwargs.get("action") ==
                                                                 "store_true" else None)
             for flags, _, _, kwargs in table}
    return argparse.Namespace(target=None, **names)


def parse_args(argv: list[str] | None = None, trial_callbacks: list[dict] | None = None) -> argparse.Namespace:
    from trainables.arguments import Arguments
    from trainables.config import METRICS, MODES, TOKENIZATIONS  # pyyaml and pydantic only: --help stays fast

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"  # no command: run
    table = [*_config_flags(MODES, METRICS, TOKENIZATIONS), *_run_flags(), *_command_flags()]
    parser = _parser(command, table)
    args = parser.parse_args(argv, namespace=_defaults(table))
    if args.resume is not None:  # a resumed run keeps what it started with: a flag that can't apply is an error
        for flag, value in (("--mode", args.mode), ("--max-concurrent", args.max_concurrent)):
            if value is not None:
                parser.error(f"{flag} can't be changed on --resume (the experiment keeps the settings it started "
                             f"with); drop {flag}, or start a new run without --resume")
    filled = {"command": command, "mode": args.mode or "smoke", "trial_callbacks": trial_callbacks}
    if command != "predict":  # predict: the folder the experiment trained on
        filled["data_dir"] = args.data_dir or str(HERE / "data")
    return Arguments(**{**vars(args), **filled})  # read-only from here on: commands work on copies


def _export(args: argparse.Namespace) -> int:
    from trainables.results.export import export
    from trainables.driver.launch import UsageError

    if not args.out:
        raise UsageError("export needs --out DIR, the new model folder (with --all: one subfolder per trial)")
    if args.trial and args.all:
        raise UsageError("export: pass --trial NAME or --all, not both")
    export(_experiment(args), Path(args.out), args.metric, trial=args.trial, all_trials=args.all,
           adapter_only=args.adapter_only, dtype=args.dtype)
    return 0


def main(argv: list[str] | None = None, trial_callbacks: list[dict] | None = None) -> int:
    """`trial_callbacks`: extra Trainer callbacks for every trial, for tests and benchmarks (tests/fault_cli.py);
    each {"factory": "module:name", "kwargs": {...}}, see trainables.trial.recipe.extra_callbacks."""
    try:
        args = parse_args(argv, trial_callbacks)
        from trainables.process import configure_cli

        configure_cli(args.command, args.mode)
        return dispatch(args)
    except UserError as err:  # the one place a user error is caught: one line, exit 2, no traceback
        print(f"error: {err.one_line()}", file=sys.stderr)
        return 2


def _target(args) -> Path | None:
    from trainables.results.report import latest_experiment

    return Path(args.target) if args.target else latest_experiment(Path(args.storage_path))


def _experiment(args) -> Path:
    """The experiment folder report/predict read: the one named, else the latest under --storage-path."""
    from trainables.driver.launch import UsageError, not_an_experiment

    target = _target(args)
    problem = not_an_experiment(target, args.target or args.storage_path)
    if problem:
        raise UsageError(problem)
    return target


def dispatch(args: argparse.Namespace) -> int:
    from trainables.driver import launch

    if args.command == "check":
        return launch.check_only(args)
    if args.command == "plan":
        return launch.plan_command(args)
    if args.command == "report":
        from trainables.results.summaries import print_results

        target = _target(args)
        starting = launch.still_starting(target) if target else None
        if starting:  # a run in its first seconds (Ray starting): nothing to report yet, and nothing wrong
            print(starting)
            return 0
        print_results(_experiment(args), args.metric)
        return 0
    if args.command == "predict":
        from trainables.arguments import replaced
        from trainables.layout import TRIAL_META
        from trainables.results.predict import predict

        if args.target and not args.checkpoint and (Path(args.target) / TRIAL_META).is_file():
            args = replaced(args, checkpoint=args.target, target=None)  # a checkpoint or an exported model folder
        # a named checkpoint needs no experiment; --out then defaults to the current folder
        target = _experiment(args) if args.target or not args.checkpoint else None
        out = Path(args.out) if args.out else (target or Path.cwd()) / "submission.csv"
        predict(target, args.checkpoint, out, Path(args.data_dir) if args.data_dir else None, args.metric,
                overwrite=args.overwrite)
        return 0
    if args.samples is not None and args.resume:
        raise launch.UsageError("search --resume: drop --samples (a resumed search continues to the samples it "
                                "started with)")
    if args.command == "search" and not args.resume:
        from trainables.driver.search import run_search

        return run_search(args)
    if args.command == "export":
        return _export(args)
    if args.resume:
        return launch.resume_grid(args)
    return launch.run_grid(args)


if __name__ == "__main__":
    sys.exit(main())
