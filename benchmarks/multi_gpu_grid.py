"""Wall-clock speed-up of the seven-config grid on several GPUs, through the project's own Tuner.

Each trial is one config of `benchmarks/gpu_configs.py` (a real-size random-weight stand-in, synthetic data
filling the config's lengths, a few optimizer steps and one generation batch), scheduled by
`trainables.grid.build_tuner` with one GPU per trial. The grid runs twice on the same machine: one trial at a
time (one GPU's worth of work), then as many at once as there are GPUs; the ratio of the two wall-clock times
is the speed-up.

    python benchmarks/multi_gpu_grid.py [--steps 2] [--only NAME ...] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def bench_trial(config: dict) -> None:
    """One grid point: the same per-config benchmark as gpu_configs.py, inside a Ray trial."""
    import os
    import sys

    sys.path.insert(0, config["run"]["root"])
    sys.path.insert(0, os.path.join(config["run"]["root"], "benchmarks"))
    from ray import tune

    import gpu_configs
    from trainables.config import load_search_space

    bench = argparse.Namespace(**config["run"]["bench"])
    cfg = load_search_space(Path(bench.search_space), [config["experiment"]["name"]])[0]
    started = time.time()
    row = gpu_configs.bench_config(cfg, bench)
    tune.report({"ok": bool(row["ok"]), "seconds": round(time.time() - started, 1),
                 "peak_gpu_gib": row.get("peak_gpu_gib") or 0.0, "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES", "")})


def worker_runtime_env() -> dict:
    """Trials import this file's trainable and gpu_configs by module name: put both folders on their path."""
    import os

    paths = [str(ROOT), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}}


def run_grid(names: list[str], concurrent: int, bench: dict, storage: Path) -> tuple[float, list[dict]]:
    from ray.tune import ExperimentAnalysis

    from trainables.config import apply_mode, load_search_space
    from trainables.grid import GridPlan, build_tuner

    experiments = [apply_mode(c, "full")[0] for c in load_search_space(Path(bench["search_space"]), names)]
    plan = GridPlan(experiments=experiments, run={"root": str(ROOT), "bench": bench, "mode": "full", "wandb": False},
                    storage_path=storage, name=f"gpus-{concurrent}", use_gpu=True, max_concurrent=concurrent)
    started = time.time()
    build_tuner(plan, trainable=bench_trial).fit()
    wall = time.time() - started
    analysis = ExperimentAnalysis(str(storage / plan.name))
    rows = [{"name": t.config["experiment"]["name"], "status": t.status,
             **{k: v for k, v in (t.last_result or {}).items() if k != "config"}} for t in analysis.trials]
    return wall, rows


def main() -> int:
    import gpu_configs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--only", nargs="+", metavar="NAME")
    parser.add_argument("--cache-dir", default=gpu_configs.BENCH_CACHE)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import ray
    import torch

    import gpu_configs
    from trainables.config import load_search_space
    from trainables.models import build_standin

    gpus = torch.cuda.device_count()
    if gpus < 2:
        print(f"{gpus} GPU(s) here: this benchmark compares one GPU with several", flush=True)
        return 2
    search_space = str(ROOT / "search_spaces")
    names = [c.name for c in load_search_space(Path(search_space), args.only)]
    bench = {"steps": args.steps, "cache_dir": args.cache_dir, "search_space": search_space, "tiny": False,
             "cpu_ok": False, "threads": None, "memory_cap_gib": None, "verbose": False}
    started = time.time()
    for arch in ("mt5", "t5", "bart"):  # build once, before trials race to build the same stand-in
        build_standin(arch, gpu_configs.tokenizer_corpus(), Path(args.cache_dir), size="real")
    print(f"stand-ins ready in {time.time() - started:.0f}s; {gpus} GPUs: {torch.cuda.get_device_name(0)}", flush=True)

    ray.init(num_gpus=gpus, include_dashboard=False, logging_level="WARNING", runtime_env=worker_runtime_env())
    storage = Path(tempfile.mkdtemp(prefix="multi-gpu-"))
    results = {}
    for concurrent in (1, gpus):
        wall, rows = run_grid(names, concurrent, bench, storage)
        results[concurrent] = {"wall_s": round(wall, 1), "trials": rows}
        print(f"max_concurrent={concurrent}: {wall:.1f}s wall clock, "
              f"{sum(r.get('ok', False) for r in rows)}/{len(rows)} ok", flush=True)
    ray.shutdown()
    one, many = results[1]["wall_s"], results[gpus]["wall_s"]
    summary = {"card": torch.cuda.get_device_name(0), "gpus": gpus, "steps": args.steps, "configs": names,
               "wall_one_gpu_s": one, "wall_all_gpus_s": many, "speedup": round(one / many, 2), "runs": results}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    print("\n| config | seconds (1 at a time) | seconds (all GPUs) | GPU seen (all GPUs) | peak GiB |\n|---|---|---|---|---|")
    by_name = {r["name"]: r for r in results[gpus]["trials"]}
    for r in sorted(results[1]["trials"], key=lambda r: r["name"]):
        o = by_name.get(r["name"], {})
        print(f"| {r['name']} | {r.get('seconds')} | {o.get('seconds')} | {o.get('cuda_visible')} | {o.get('peak_gpu_gib')} |")
    print(f"\nwall clock: {one:.1f}s on one GPU at a time, {many:.1f}s on {gpus} GPUs: speed-up {one / many:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
