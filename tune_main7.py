#!/usr/bin/env python3
"""Run the seven Korean dialogue-summarization experiments as one Ray Tune grid.

  python tune_main7.py --mode smoke          # offline: stand-in models, sample data, CPU (minutes)
  python tune_main7.py --mode quick          # real models, 1 epoch each, 1 GPU per trial
  python tune_main7.py --mode full           # real models, each config's epochs
  python tune_main7.py --resume [DIR]        # continue an interrupted experiment (latest by default)
  python tune_main7.py check [--mode M]      # validate configs and data, start nothing
  python tune_main7.py report [DIR]          # result table of an experiment (latest by default)

Heavy libraries (torch, ray, transformers) are imported only once a command needs them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMANDS = ("run", "check", "report")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tune_main7.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", default="run", choices=COMMANDS, help="what to do (default: run)")
    parser.add_argument("target", nargs="?", help="report: the experiment folder (default: the latest)")
    parser.add_argument("--mode", default="smoke", choices=("smoke", "quick", "full"),
                        help="smoke: offline stand-ins on CPU; quick: real models, 1 epoch; full: real models")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="DIR",
                        help="continue an interrupted experiment (default: the latest under --storage-path)")
    parser.add_argument("--search-space", default=str(HERE / "search_spaces"), help="folder of experiment YAMLs")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these experiments")
    parser.add_argument("--data-dir", default=str(HERE / "data"), help="folder with train.csv, dev.csv, test.csv")
    parser.add_argument("--storage-path", default=str(HERE / "ray_results"), help="where Tune writes results")
    parser.add_argument("--name", help="experiment folder name (default: main7-<mode>-<timestamp>)")
    parser.add_argument("--cache-dir", help="where stand-in models are built (default: ~/.cache/tune_main7)")
    parser.add_argument("--metric", default="competition_score",
                        choices=("competition_score", "rouge1", "rouge2", "rougeL", "eval_loss"),
                        help="chooses the best checkpoint of each trial and the best trial")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: the GPUs, or CPUs in smoke)")
    parser.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial from its checkpoint")
    parser.add_argument("--allow-cpu", action="store_true", help="quick/full without a GPU: run on the CPU")
    parser.add_argument("--address", help="connect to an existing Ray cluster (auto, or ray://host:port)")
    parser.add_argument("--dashboard", action="store_true", help="start the Ray dashboard on 127.0.0.1")
    parser.add_argument("--wandb", action="store_true", help="log each trial to Weights & Biases")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from trainables import launch
    from trainables.models import ModelUnavailable

    try:
        if args.command == "check":
            return launch.check_only(args)
        if args.command == "report":
            from trainables.report import latest_experiment, print_summary

            target = Path(args.target) if args.target else latest_experiment(Path(args.storage_path))
            if target is None or not target.is_dir():
                return launch.fail(f"no experiment found at {args.target or args.storage_path}")
            print_summary(target, args.metric)
            return 0
        if args.resume:
            return launch.resume_grid(args)
        return launch.run_grid(args)
    except (*launch.KNOWN_ERRORS, ModelUnavailable) as err:
        return launch.fail(str(err))


if __name__ == "__main__":
    sys.exit(main())
