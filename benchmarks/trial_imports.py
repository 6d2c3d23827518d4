"""What a trial process spends importing its libraries, with bitsandbytes imported plainly and through
compat.import_bitsandbytes (its torch.compile wrappers made at first call), side by side.

    python benchmarks/trial_imports.py [--repeats 5]

Each sample is a fresh Python process importing what a trial imports before it trains (trainables.trial.recipe:
torch, transformers' Trainer, peft, bitsandbytes, datasets); the two kinds alternate, so a change in the machine's
speed falls on both. CPU time is the child's user+system time (getrusage), wall time the parent's clock.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

KINDS = {
    "plain": "import trainables.trial.recipe",
    "deferred compile": "from trainables import compat; compat.import_bitsandbytes(); import trainables.trial.recipe",
}
CHECK = "; import sys; print('torch._inductor.compile_fx' in sys.modules)"


def sample(code: str) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code + CHECK], cwd=ROOT, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, proc.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sample(KINDS["plain"])  # warm the page cache and the bytecode caches once, not counted
    runs: dict[str, list[tuple[float, float, str]]] = {kind: [] for kind in KINDS}
    for _ in range(args.repeats):
        for kind, code in KINDS.items():
            runs[kind].append(sample(code))
    medians = {}
    for kind, samples in runs.items():
        cpu = statistics.median(s[0] for s in samples)
        wall = statistics.median(s[1] for s in samples)
        medians[kind] = cpu
        print(f"{kind:17s} CPU {cpu:5.2f} s, wall {wall:5.2f} s (medians of {len(samples)}); "
              f"torch._inductor imported: {sorted({s[2] for s in samples})}")
    plain, deferred = medians["plain"], medians["deferred compile"]
    print(f"saved {plain - deferred:.2f} s of CPU a trial process ({plain / deferred:.2f}x less CPU to import)")


if __name__ == "__main__":
    main()
