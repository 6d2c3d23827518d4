"""How long ROUGE scoring adds to an evaluation: ~500 dev summaries, both tokenizations.

    python benchmarks/rouge_speed.py [--rows 500] [--repeats 3]

Predictions are references with words dropped and shuffled, so the scorer does real LCS work. Prints the
analyzer's load time once and the median scoring time per call (a new scorer per trial loads the analyzer once).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainables.data import read_split  # noqa: E402
from trainables.metrics import KoreanRouge  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    summaries = read_split(ROOT / "data", "train").frame["summary"].tolist()
    rng = random.Random(0)
    refs = [summaries[i % len(summaries)] for i in range(args.rows)]
    preds = []
    for ref in refs:
        words = [w for w in ref.split() if rng.random() > 0.3]
        rng.shuffle(words)
        preds.append(" ".join(words))
    print(f"{args.rows} prediction/reference pairs, {args.repeats} calls each")
    for tokenization in ("whitespace", "morpheme"):
        started = time.perf_counter()
        scorer = KoreanRouge(tokenization)
        load = time.perf_counter() - started
        times = []
        for _ in range(args.repeats):
            scorer.clear_cache()  # time the morpheme analysis too, not a cache hit
            started = time.perf_counter()
            scores = scorer.score(preds, refs)
            times.append(time.perf_counter() - started)
        print(f"{tokenization:10s}  load {load:.2f} s  score median {statistics.median(times):.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f})  competition_score {scores['competition_score']:.2f}")


if __name__ == "__main__":
    main()
