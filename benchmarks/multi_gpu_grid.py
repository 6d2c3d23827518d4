"""Wall-clock of the seven-config grid through the project's own Tuner: one trial at a time against packed trials on
one GPU, or against all GPUs at once (and, with --pack, packed onto them) on several.

Each trial is one config of `benchmarks/gpu_configs.py` (a real-size random-weight stand-in, synthetic data filling
the config's lengths, --steps optimizer steps and one generation batch), scheduled by `trainables.driver.grid.build_tuner`.
Placement is the driver's own: `launch.preflight` plans the grid as `tune_main7.py --mode full` does on this
machine's GPUs (plan.forecast on --data-dir's row counts, plan.placements), orders the trials longest first and puts
each trial's share in run.placement; Ray gets the trial's fraction (grid's resources function) and the trial caps its
own allocator from the fraction Ray gave it (recipe.decide_trial_settings, placement.apply_memory_cap), because the
benchmark hands the trial's placement to the TrialConfig it runs (gpu_configs.bench_config). Passes:

  one GPU:       one at a time (a whole GPU each, --no-pack)  vs  packed (the plan's fractions, all may start at once)
  several GPUs:  one at a time  vs  one per GPU, all GPUs at once  [vs packed onto all GPUs, with --pack]

Each pass reports its wall-clock; per trial its seconds, peak GiB, GPU fraction and cap as the trial recorded them
(eff_gpu_fraction, eff_memory_cap_gib, eff_packed, eff_replaced) and its training and eval losses, so that "packing
must not change results" can be checked. The seven configs packed on one H100 (about 5 minutes at --steps 3):

    python benchmarks/multi_gpu_grid.py --steps 3 --out $OUT/packed-ray.json --cache-dir /tmp/bc

    python benchmarks/multi_gpu_grid.py --tiny --only 01_baseline_kobart_rtx3090 03_high_learning_rate_rtx3090
        --made-up-gpus 1    # CPU dry run: tiny stand-ins, a made-up GPU in Ray, placement planned for an H100
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

TRIAL_FIELDS = ("ok", "error", "seconds", "start", "end", "peak_gpu_gib", "cuda_visible", "eff_gpu_fraction",
                "eff_memory_cap_gib", "eff_packed", "eff_replaced", "eff_train_batch_size",
                "eff_gradient_accumulation_steps", "train_losses", "eval_loss")


def bench_trial(config: dict) -> None:
    """One grid point: gpu_configs.py's per-config benchmark inside a Ray trial, with the trial's placement."""
    import os
    import sys

    sys.path.insert(0, config["run"]["root"])
    sys.path.insert(0, os.path.join(config["run"]["root"], "benchmarks"))
    from ray import tune

    import gpu_configs
    from trainables.config import load_search_space

    bench = argparse.Namespace(**config["run"]["bench"])
    name = config["experiment"]["name"]
    cfg = load_search_space(Path(bench.search_space), [name])[0]
    started = time.time()
    row = gpu_configs.bench_config(cfg, bench, placement=(config["run"].get("placement") or {}).get(name))
    tune.report({"ok": bool(row["ok"]), "error": row.get("error") or "", "seconds": round(time.time() - started, 1),
                 "start": started, "end": time.time(), "peak_gpu_gib": row.get("peak_gpu_gib") or 0.0,
                 "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                 "train_losses": row.get("train_losses"), "eval_loss": row.get("eval", {}).get("eval_loss"),
                 **{k: v for k, v in row.items() if k.startswith("eff_")},
                 "bench_row": json.dumps(row, default=str)})  # gpu_configs' whole row: the plan can be checked against it


def worker_runtime_env() -> dict:
    """Trials import this file's trainable and gpu_configs by module name: put both folders on their path."""
    import os

    from trainables.process import worker_env

    paths = [str(ROOT), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")]
    return {"env_vars": {**worker_env("full"), "PYTHONPATH": os.pathsep.join(p for p in paths if p)}}


def run_pass(label: str, names: list[str], gpus: int, pack: bool, max_concurrent: int | None, bench: dict,
             models: dict, data_dir: Path, storage: Path) -> dict:
    """One grid through build_tuner, placed by launch.preflight (plan, longest first, run.placement)."""
    from ray import tune
    from ray.tune import ExperimentAnalysis

    from trainables.config import RunContext, apply_mode, load_search_space
    from trainables.driver.grid import GridPlan, build_tuner
    from trainables.driver.launch import preflight

    experiments = [apply_mode(c, "full")[0] for c in load_search_space(Path(bench["search_space"]), names)]
    run = RunContext(mode="full", data_dir=str(data_dir), models=models)
    args = Namespace(no_pack=not pack, max_concurrent=max_concurrent)
    experiments, concurrent = preflight(args, experiments, run, use_gpu=True, gpus=gpus, max_concurrent=max_concurrent or gpus)
    plan = GridPlan(experiments=experiments, run=run, storage_path=storage, name=label, use_gpu=True,
                    max_concurrent=concurrent, metric="eval_loss", max_failures=1)  # an overrun retries on a whole GPU
    space = {"experiment": tune.grid_search([e.model_dump() for e in experiments]),  # longest first
             "run": {**run.model_dump(), "root": str(ROOT), "bench": bench}}
    print(f"{label}: {len(experiments)} trials, up to {concurrent} at once, GPU shares "
          + ", ".join(f"{e.name} {run.placement[e.name].gpu:g}" for e in experiments), flush=True)
    started = time.time()
    build_tuner(plan, trainable=bench_trial, param_space=space).fit()
    wall = time.time() - started
    trials = {}
    for t in ExperimentAnalysis(str(storage / label)).trials:
        result = t.last_result or {}
        trials[t.config["experiment"]["name"]] = {"status": t.status, **{k: result.get(k) for k in TRIAL_FIELDS},
                                                  "bench_row": json.loads(result.get("bench_row") or "{}")}
    print(f"{label}: {wall:.1f}s wall-clock, {sum(bool(r['ok']) for r in trials.values())}/{len(trials)} ok", flush=True)
    return {"wall_s": round(wall, 1), "max_concurrent": concurrent, "order": [e.name for e in experiments],
            "trials": trials}


def same_results(a: dict, b: dict) -> str:
    """How far trial b's losses are from trial a's (largest relative difference), or why they can't be compared."""
    pairs = list(zip(a.get("train_losses") or [], b.get("train_losses") or [])) + [(a.get("eval_loss"), b.get("eval_loss"))]
    if not pairs or any(x is None or y is None for x, y in pairs):
        return "n/a"
    return f"{max(abs(x - y) / max(abs(x), 1e-12) for x, y in pairs):.1e}"


def table(passes: dict, base: str, other: str) -> str:
    lines = [f"| config | s ({base}) | s ({other}) | GPU share / cap GiB ({other}) | peak GiB ({base} / {other}) | "
             f"train loss ({base} / {other}) | eval loss ({base} / {other}) | max rel. diff |", "|---|---|---|---|---|---|---|---|"]
    for name in passes[base]["order"]:
        a, b = passes[base]["trials"].get(name, {}), passes[other]["trials"].get(name, {})
        share = f"{b.get('eff_gpu_fraction')} / {b.get('eff_memory_cap_gib')}" + (" (re-placed)" if b.get("eff_replaced") else "")
        loss = lambda r: ", ".join(f"{x:.6f}" for x in r.get("train_losses") or []) or "-"  # noqa: E731
        lines.append(f"| {name} | {a.get('seconds')} | {b.get('seconds')} | {share} | {a.get('peak_gpu_gib')} / "
                     f"{b.get('peak_gpu_gib')} | {loss(a)} / {loss(b)} | {a.get('eval_loss')} / {b.get('eval_loss')} | "
                     f"{same_results(a, b)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import gpu_configs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--only", nargs="+", metavar="NAME")
    parser.add_argument("--cache-dir", default=gpu_configs.BENCH_CACHE)
    parser.add_argument("--data-dir", default=str(ROOT / "data"),
                        help="the data folder the plan counts rows of (longest-first order, whether packing pays)")
    parser.add_argument("--pack", action="store_true", help="several GPUs: also a pass packed onto all of them")
    parser.add_argument("--tiny", action="store_true", help="tiny stand-ins and short lengths (a CPU dry run)")
    parser.add_argument("--made-up-gpus", type=int, default=0, metavar="N",
                        help="tell Ray there are N GPUs (a CPU dry run with --tiny); the plan is for an H100")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from trainables.process import set_defaults

    set_defaults({"RAY_AIR_NEW_OUTPUT": "0"})  # the project's trial table, as tune_main7.py shows it
    import ray
    import torch

    from trainables.config import ModelLocation, load_search_space
    from trainables.trial.families.seq2seq.standin import build_standin

    gpus = args.made_up_gpus or torch.cuda.device_count()
    if gpus < 1:
        print("no GPU here: this benchmark needs one (or --tiny --made-up-gpus 1 for a CPU dry run)", flush=True)
        return 2
    search_space = str(ROOT / "search_spaces")
    names = [c.name for c in load_search_space(Path(search_space), args.only)]
    size = "tiny" if args.tiny else "real"
    bench = {"steps": args.steps, "cache_dir": args.cache_dir, "search_space": search_space, "tiny": args.tiny,
             "cpu_ok": bool(args.made_up_gpus), "threads": 1 if args.made_up_gpus else None, "memory_cap_gib": None,
             "verbose": False}
    started = time.time()
    models = {}
    for c in load_search_space(Path(search_space), names):  # build once, before trials race to build the same one
        path = build_standin(c.model.architecture, gpu_configs.tokenizer_corpus(), Path(args.cache_dir), size=size,
                             warm_start=False)
        models[c.model.checkpoint] = ModelLocation(model_path=str(path), model_source=f"standin:{size}")
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{gpus} made-up GPU(s) on the CPU"
    print(f"stand-ins ready in {time.time() - started:.0f}s; {gpus} GPU(s): {card}", flush=True)

    ray.init(address="local", num_gpus=gpus, include_dashboard=False, logging_level="WARNING", runtime_env=worker_runtime_env())
    storage = Path(tempfile.mkdtemp(prefix="grid-bench-"))
    common = {"names": names, "gpus": gpus, "bench": bench, "models": models, "data_dir": Path(args.data_dir),
              "storage": storage}
    todo = [("one_at_a_time", False, 1)] + [("all_gpus", False, gpus)] * (gpus > 1) + [("packed", True, None)] * (
        gpus == 1 or args.pack)
    passes: dict = {}
    for label, pack, concurrent in todo:
        passes[label] = run_pass(label, pack=pack, max_concurrent=concurrent, **common)
        one = passes["one_at_a_time"]["wall_s"]
        summary = {"card": card, "gpus": gpus, "steps": args.steps, "size": size, "configs": names,
                   "speedup": {k: round(one / p["wall_s"], 2) for k, p in passes.items() if k != "one_at_a_time"},
                   "passes": passes}
        if args.out:  # after each pass: a timeout keeps what ran
            Path(args.out).write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    ray.shutdown()
    for other in (k for k in passes if k != "one_at_a_time"):
        print(f"\n{table(passes, 'one_at_a_time', other)}")
    print("\nwall-clock: " + "; ".join(f"{k} {p['wall_s']:.1f}s" for k, p in passes.items())
          + "; speed-up against one at a time: " + ", ".join(f"{k} {v:.2f}x" for k, v in summary["speedup"].items()))
    failed = [f"{k}: {n}" for k, p in passes.items() for n, t in p["trials"].items() if not t.get("ok")]
    if failed:
        print("FAILED: " + "; ".join(failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
