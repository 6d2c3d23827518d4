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

HERE = Path(__file__).resolve().parent
COMMANDS = ("run", "check", "report", "predict", "plan", "search", "export")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from trainables.config import METRICS, MODES, TOKENIZATIONS  # pyyaml and pydantic only: --help stays fast

    parser = argparse.ArgumentParser(
        prog="tune_main7.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", default="run", choices=COMMANDS, help="what to do (default: run)")
    parser.add_argument("target", nargs="?", help="report/predict: the experiment folder (default: the latest); "
                        "search: the config to search around (a name in search_spaces/search/ or search_spaces/, or a YAML path)")
    parser.add_argument("--mode", choices=MODES,
                        help="smoke (default): offline stand-ins on CPU; quick: real models, 1 epoch; full: real models")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="DIR",
                        help="continue an interrupted experiment (default: the latest under --storage-path)")
    parser.add_argument("--search-space", default=str(HERE / "search_spaces"), help="folder of experiment YAMLs")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these experiments")
    parser.add_argument("--data-dir", help="folder with train.csv, dev.csv, test.csv (default: data/; predict: the "
                                            "folder the experiment trained on)")
    parser.add_argument("--storage-path", default=str(HERE / "ray_results"),
                        help="where Tune writes results: a folder (shared/mounted on a cluster) or a URI such as s3://bucket/x")
    parser.add_argument("--name", help="experiment folder name, new (default: main7-<mode>-<timestamp>-<random>)")
    parser.add_argument("--cache-dir", help="where stand-in models are built (default: ~/.cache/tune_main7)")
    parser.add_argument("--metric", choices=METRICS,
                        help="the run's one metric: early stopping, the checkpoints kept, the best trial (run: sets "
                             "metric.best_metric of every config, default the configs' own, competition_score unless "
                             "set; report/predict/export: default the metric the experiment ran with)")
    parser.add_argument("--tokenization", choices=TOKENIZATIONS,
                        help="ROUGE tokenization for every experiment (default: each YAML's metric.tokenization, "
                             "whitespace unless set)")
    parser.add_argument("--max-concurrent", type=_positive_int, help="trials at once (default: the GPUs, the cluster's with --address, or CPUs in smoke)")
    parser.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial from its checkpoint")
    parser.add_argument("--keep-checkpoints", type=_positive_int, default=1, metavar="N",
                        help="per trial, keep the N best checkpoints by --metric plus always the latest "
                             "(default 1: the best and the latest, at most two folders)")
    parser.add_argument("--allow-cpu", action="store_true", help="run the trials on the CPU even in quick/full mode (real models: very slow, one at a time)")
    parser.add_argument("--gpu", action="store_true",
                        help="smoke mode on GPUs: stand-in models, but one GPU per trial (checks the GPU stack offline)")
    parser.add_argument("--address", help="connect to an existing Ray cluster (auto, host:port or ray://host:port; RAY_ADDRESS works too)")
    parser.add_argument("--dashboard", action="store_true", help="start the Ray dashboard on 127.0.0.1")
    parser.add_argument("--wandb", action="store_true",
                        help="log each trial to Weights & Biases (offline unless WANDB_API_KEY is set; TUNE_MAIN7_WANDB=1 works too)")
    parser.add_argument("--wandb-project", help="W&B project (default: $WANDB_PROJECT or dialogue-summarization-tune)")
    parser.add_argument("--card", choices=("rtx3090", "a100-40", "a100-80", "h100", "h200"),
                        help="plan: the card to plan for (default: this machine's GPU, else h100)")
    parser.add_argument("--gpu-memory", type=float, metavar="GB", help="plan: a card with this much memory")
    parser.add_argument("--gpus", type=_positive_int, metavar="N", help="plan: GPUs to plan for (default: this machine's, else 1)")
    parser.add_argument("--calibrate", action="store_true",
                        help="plan: measure this machine's GPU on the configs (a few real-size steps each) and write "
                             "trainables/calibration/<card>.json")
    parser.add_argument("--no-pack", action="store_true",
                        help="one trial per GPU even where the plan says several fit one card")
    parser.add_argument("--samples", type=int, metavar="N", help="search: how many configs to sample and train")
    parser.add_argument("--checkpoint", help="predict: this checkpoint folder instead of the best trial's best")
    parser.add_argument("--out", help="predict: the submission CSV (default: <experiment>/submission.csv); "
                                      "export: the new model folder (with --all: one subfolder per trial)")
    parser.add_argument("--trial", metavar="NAME", help="export: this trial (config name) instead of the best")
    parser.add_argument("--all", action="store_true", help="export: every trial that has a checkpoint")
    parser.add_argument("--adapter-only", action="store_true", help="export: just the LoRA adapter and tokenizer")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="export: the merged weights' dtype")
    args = parser.parse_args(argv)
    if args.resume is not None:  # a resumed run keeps what it started with: a flag that can't apply is an error
        for flag, value in (("--mode", args.mode), ("--max-concurrent", args.max_concurrent)):
            if value is not None:
                parser.exit(2, f"error: {flag} can't be changed on --resume (the experiment keeps the settings it "
                               f"started with); drop {flag}, or start a new run without --resume\n")
    args.mode = args.mode or "smoke"
    if args.command != "predict":  # predict: the folder the experiment trained on
        args.data_dir = args.data_dir or str(HERE / "data")
    return args


def _export(args: argparse.Namespace) -> int:
    from trainables.export import export
    from trainables.launch import UsageError

    if not args.out:
        raise UsageError("export needs --out DIR, the new model folder (with --all: one subfolder per trial)")
    if args.trial and args.all:
        raise UsageError("export: pass --trial NAME or --all, not both")
    export(_experiment(args), Path(args.out), args.metric, trial=args.trial, all_trials=args.all,
           adapter_only=args.adapter_only, dtype=args.dtype)
    return 0


def main(argv: list[str] | None = None, trial_callbacks: list[dict] | None = None) -> int:
    """`trial_callbacks`: extra Trainer callbacks for every trial, for tests and benchmarks (tests/fault_cli.py);
    each {"factory": "module:name", "kwargs": {...}}, see trainables.seq2seq.extra_callbacks."""
    args = parse_args(argv)
    args.trial_callbacks = trial_callbacks
    from trainables.errors import UserError
    from trainables.process import configure_cli

    configure_cli(args.command, args.mode)
    try:
        return dispatch(args)
    except UserError as err:  # the one place a user error is caught: one line, exit 2, no traceback
        print(f"error: {err.one_line()}", file=sys.stderr)
        return 2


def _experiment(args) -> Path:
    """The experiment folder report/predict read: the one named, else the latest under --storage-path."""
    from trainables.launch import UsageError, not_an_experiment
    from trainables.report import latest_experiment

    target = Path(args.target) if args.target else latest_experiment(Path(args.storage_path))
    problem = not_an_experiment(target, args.target or args.storage_path)
    if problem:
        raise UsageError(problem)
    return target


def dispatch(args: argparse.Namespace) -> int:
    from trainables import launch

    if args.command == "check":
        return launch.check_only(args)
    if args.command == "plan":
        return launch.plan_command(args)
    if args.command == "report":
        from trainables.summaries import print_results

        print_results(_experiment(args), args.metric)
        return 0
    if args.command == "predict":
        from trainables.layout import TRIAL_META
        from trainables.predict import predict

        if args.target and not args.checkpoint and (Path(args.target) / TRIAL_META).is_file():
            args.checkpoint, args.target = args.target, None  # a checkpoint or an exported model folder
        # a named checkpoint needs no experiment; --out then defaults to the current folder
        target = _experiment(args) if args.target or not args.checkpoint else None
        out = Path(args.out) if args.out else (target or Path.cwd()) / "submission.csv"
        predict(target, args.checkpoint, out, Path(args.data_dir) if args.data_dir else None, args.metric)
        return 0
    if args.samples is not None and (args.command != "search" or args.resume):
        raise launch.UsageError("--samples belongs to `search` (a resumed search continues to the samples it "
                                "started with)")
    if args.command == "search" and not args.resume:
        from trainables.search import run_search

        return run_search(args)
    if args.command == "export":
        return _export(args)
    if args.resume:
        return launch.resume_grid(args)
    return launch.run_grid(args)


if __name__ == "__main__":
    sys.exit(main())
