"""Fit a card's calibration table (trainables/driver/calibration/<card>.json) from real-size benchmark rows.

The plan (trainables.driver.plan) predicts a trial's memory and time as workload features times a few
coefficients per card (trainables.driver.calibration says which). This script finds the coefficients from rows
that `benchmarks/gpu_configs.py` measured on that card (real-size stand-ins, a few steps and one eval batch per
config), and checks them: each row predicted in-sample and leaving its config out.

    python benchmarks/fit_calibration.py --measure                       # on a GPU: gpu_configs.py, fit, write
    python benchmarks/fit_calibration.py --rows benchmarks/results/gpu_configs-2026-11-26-h100-calibrate.json ...
                                                                         # on any machine: refit stored rows

`python tune_main7.py plan --calibrate` runs `--measure` (this module's main, in its process).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trainables.config import ExperimentConfig, apply_mode, load_search_space  # noqa: E402
from trainables.driver.calibration import (FLOP_UTILISATION, Calibration, Card, PlanError,  # noqa: E402
                                           bandwidth_s, calibration_path, card_of, eval_batch_s, flop_s,
                                           load_calibration, load_s, micro_batch_s, peaks)
from trainables.driver.features import Features, features, model_dims  # noqa: E402
from trainables.driver.packing import PACKED_SLOWDOWN  # noqa: E402
from trainables.trial.families import FAMILIES  # noqa: E402


# A coefficient is fitted only on clean rows of at least this many configs that carry its feature; with fewer it is
# kept from the card's table so far (where there is one), else fitted on what rows there are and marked so.
MIN_CONFIGS = 2
# Not in any row (a benchmark row starts inside the trial's process): stated values, named in the table's backing.
STATED = {
    "trial_start_s": (8.0, "stated: a Ray trial's process start and imports (about 7 s per trivial trial on the "
                           "H100, FIELD-NOTES.md); no row measures it"),
    "packed_slowdown": (PACKED_SLOWDOWN, "stated: four configs packed on one H100 ran ~0.35 slower per co-running "
                                         "trial (BENCHMARKS.md, 2026-11-25)"),
}


@dataclass
class RowSet:
    """Usable benchmark rows with each row's experiment and its features at the batch it really trained with."""

    rows: list[dict[str, Any]]
    exps: list[ExperimentConfig]
    feats: list[Features]
    card: Card

    def subset(self, keep: list[int]) -> RowSet:
        return RowSet([self.rows[i] for i in keep], [self.exps[i] for i in keep], [self.feats[i] for i in keep], self.card)


def row_set(rows: list[dict[str, Any]], experiments: dict[str, ExperimentConfig]) -> RowSet:
    rows = [r for r in rows if r.get("ok") and r.get("name") in experiments and not r.get("memory_cap_gib")]
    if len(rows) < 2:
        raise PlanError("calibration needs at least two successful real-size benchmark rows (gpu_configs.py)")
    exps = [experiments[r["name"]] for r in rows]
    feats = [features(e, model_dims(e.model.architecture, e.model.checkpoint, r.get("model_path")),
                      r.get("eff_load_in_4bit"), batch=row_batch(e, r)[0]) for r, e in zip(rows, exps)]
    return RowSet(rows, exps, feats, card_of(rows[0]["card"]))


def measured_step_s(row: dict[str, Any]) -> float:
    """A steady optimizer step's seconds (label tokens per step over the throughput after step 1)."""
    return row["train_label_tokens"] / row["optimizer_steps"] / row["train_tok_s_after_step1"]


def nnls(rows: list[list[float]], y: list[float]) -> list[float]:
    """Least squares on relative errors with non-negative coefficients (a tiny active-set loop)."""
    import numpy as np

    a, b = np.array(rows, dtype=float), np.array(y, dtype=float)
    w = 1 / np.maximum(np.abs(b), 1e-9)
    a, b = a * w[:, None], b * w
    active = list(range(a.shape[1]))
    coef = np.zeros(a.shape[1])
    while active:
        c, *_ = np.linalg.lstsq(a[:, active], b, rcond=None)
        if (c >= 0).all():
            coef[active] = c
            break
        active.pop(int(np.argmin(c)))
    return [float(x) for x in coef]


def backed_by(rs: RowSet, use: list[int]) -> str:
    return f"{len(use)} rows of {len({rs.rows[i]['name'] for i in use})} configs"


@dataclass
class Fit:
    """Coefficients as they are found, with what backs each (rows and configs, kept, or stated)."""

    base: dict[str, float]
    min_configs: int
    coefficients: dict[str, float] = field(default_factory=dict)
    backing: dict[str, str] = field(default_factory=dict)

    def terms(self, rs: RowSet, names: tuple[str, ...], columns, target, use: list[int], fallback: list[int],
              counts=None) -> None:
        """Fit `names` (`columns(features)`: their feature values) to `target(row, features)` on rows `use`. A
        coefficient whose feature fewer than `min_configs` of those configs carry (`counts[name](i)`: row i counts
        for it; default: its feature is > 0) is kept from `base`, or else fitted on `fallback` rows (its backing says
        so); no row carrying it at all: 1.0 (the feature as modelled)."""
        def carried(k: int, rows: list[int]) -> list[int]:
            test = (counts or {}).get(names[k])
            return [i for i in rows if (test(i) if test else columns(rs.feats[i])[k] > 0)]

        by = [carried(k, use) for k in range(len(names))]
        weak = [n for n, rows in zip(names, by) if len({rs.rows[i]["name"] for i in rows}) < self.min_configs]
        if weak and not all(n in self.base for n in weak):
            use = fallback
            by = [carried(k, use) for k in range(len(names))]
        keep = [k for k, n in enumerate(names) if n in weak and n in self.base]
        free = [k for k in range(len(names)) if k not in keep and by[k]]
        y = [target(rs.rows[i], rs.feats[i]) - sum(self.base[names[k]] * columns(rs.feats[i])[k] for k in keep)
             for i in use]
        got = nnls([[columns(rs.feats[i])[k] for k in free] for i in use], y) if free else []
        for k, n in enumerate(names):
            if k in keep:
                self.coefficients[n], self.backing[n] = self.base[n], "kept from the previous table (too few clean rows)"
            elif k in free:
                self.coefficients[n] = got[free.index(k)]
                self.backing[n] = backed_by(rs, by[k]) + (" (fewer than 2 clean configs)" if n in weak else "")
            else:
                self.coefficients[n], self.backing[n] = 1.0, "no row carries its feature: 1.0, as modelled"


def fit_memory(rs: RowSet, fit: Fit) -> None:
    """Training peak = resident + mem_act x activations + mem_logit x logits, on rows whose peak is clean;
    generation peak = resident + merged copy + mem_gen x generation bytes, on clean rows that generation sets."""
    every = list(range(len(rs.rows)))
    clean = [i for i in every if not stepped_down(rs.rows[i])]
    # mem_act counts the configs that keep all their activations: with gradient checkpointing a config's activation
    # feature is its checkpoints only, small beside its logits, which can't tell the two coefficients apart
    fit.terms(rs, ("mem_act", "mem_logit"), lambda f: (f.act_gib, f.logit_gib),
              lambda r, f: r["peak_gpu_train_gib"] - f.static_gib, clean, every,
              counts={"mem_act": lambda i: not rs.exps[i].training.gradient_checkpointing})
    if "rows of" in fit.backing["mem_act"]:
        fit.backing["mem_act"] += " without gradient checkpointing; fitted on every clean row (checkpoints)"
    gen_bound = [i for i in every if rs.rows[i]["peak_gpu_gib"] > 1.1 * rs.rows[i]["peak_gpu_train_gib"]]
    fit.terms(rs, ("mem_gen",), lambda f: (f.gen_gib,), lambda r, f: r["peak_gpu_gib"] - f.static_gib - f.merged_gib,
              [i for i in gen_bound if i in clean], gen_bound or every)
    ratios = [rs.rows[i]["peak_gpu_reserved_gib"] / rs.rows[i]["peak_gpu_gib"] for i in clean]
    if ratios or "reserved_ratio" not in fit.base:
        fit.coefficients["reserved_ratio"] = statistics.median(ratios or [1.2])
        fit.backing["reserved_ratio"] = f"median of {len(ratios)} clean rows" if ratios else "stated: 1.2, no clean row"
    else:
        fit.coefficients["reserved_ratio"] = fit.base["reserved_ratio"]
        fit.backing["reserved_ratio"] = "kept from the previous table (no clean row)"


def fit_times(rs: RowSet, fit: Fit) -> None:
    """Step = accumulation x (s_per_call x calls + tflop / (dense bf16 x flop_utilisation)); eval batch =
    gen_s_per_call x generation calls + the bandwidth term; first step's extra: a median; load: per attempt."""
    every = list(range(len(rs.rows)))
    accum = [row_batch(e, r)[1] for r, e in zip(rs.rows, rs.exps)]
    steps = [measured_step_s(r) for r in rs.rows]
    call, per_flop = nnls([[k * f.module_calls, k * f.tflop / rs.card.bf16_tflops] for k, f in zip(accum, rs.feats)], steps)
    if per_flop <= 0:  # the rows can't see the FLOPs: the term at the default utilisation, the calls refitted
        (call,) = nnls([[k * f.module_calls] for k, f in zip(accum, rs.feats)],
                       [s - k * flop_s(f, rs.card) for s, k, f in zip(steps, accum, rs.feats)])
    fit.coefficients.update(s_per_call=call, flop_utilisation=1 / per_flop if per_flop > 0 else FLOP_UTILISATION)
    (gen,) = nnls([[f.gen_calls] for f in rs.feats], [r["eval_gen_s"] - bandwidth_s(f, rs.card)
                                                     for r, f in zip(rs.rows, rs.feats)])
    warm = statistics.median(max(0.0, r["train_s"] - s * r["optimizer_steps"]) for r, s in zip(rs.rows, steps))
    (load,) = nnls([[1 + failed_attempts(r)] for r in rs.rows],  # every attempt loads; a failed one runs a first step
                   [max(0.1, r["run_trial_s"] - r["train_s"] - r["eval_gen_s"] - failed_attempts(r) * warm)
                    for r in rs.rows])
    fit.coefficients.update(gen_s_per_call=gen, first_step_extra_s=warm, load_s=load)
    for n in ("s_per_call", "gen_s_per_call", "load_s"):
        fit.backing[n] = backed_by(rs, every)
    fit.backing["flop_utilisation"] = backed_by(rs, every) if per_flop > 0 else f"stated: {FLOP_UTILISATION}"
    fit.backing["first_step_extra_s"] = f"median of {len(rs.rows)} rows"


def fit_coefficients(rs: RowSet, base: dict[str, float] | None = None, min_configs: int = MIN_CONFIGS) -> Fit:
    fit = Fit(base=dict(base or {}), min_configs=min_configs)
    fit_memory(rs, fit)
    fit_times(rs, fit)
    for name, (value, why) in STATED.items():
        fit.coefficients[name], fit.backing[name] = value, why
    return fit


def fit_calibration(rows: list[dict[str, Any]], experiments: dict[str, ExperimentConfig], *, source: str = "",
                    command: str = "", measured: str = "", keep_memory_from: Calibration | None = None) -> Calibration:
    """The card's table from `benchmarks/gpu_configs.py` rows (real size, one card). Each row's features are those
    of the micro-batch and accumulation it really trained with (eff_train_batch_size, eff_gradient_accumulation_steps).
    Rows whose peak includes a failed larger micro-batch (stepped_down) are left out of the memory fit. Each row is
    then predicted in-sample and leaving its config out (every row of that config), into `fit`."""
    rs = row_set(rows, experiments)
    families = sorted({FAMILIES[e.model.architecture] for e in rs.exps})
    if len(families) > 1:
        raise PlanError(f"the rows measure several model families ({', '.join(families)}): a table holds one; "
                        "calibrate each family's search space on its own (--search-space search_spaces/llm ...)")
    fit = fit_coefficients(rs, keep_memory_from.coefficients if keep_memory_from else None)
    calib = Calibration(card=rs.rows[0]["card"], key=rs.card.key, memory_gib=rs.card.memory_gib or 0.0,
                        measured=measured, source=source, command=command, coefficients=fit.coefficients,
                        backing=fit.backing, families=families)
    loo = leave_one_config_out(rs)
    for i, (r, e, f) in enumerate(zip(rs.rows, rs.exps, rs.feats)):
        calib.fit.append(fit_row(r, predict_benchmark(e, r, calib, f, rs.card), loo[i], batch=row_batch(e, r)))
    calib.notes = fit_notes(rs, calib, keep_memory_from)
    return calib


def leave_one_config_out(rs: RowSet) -> list[dict[str, float]]:
    """Each row predicted by coefficients fitted on the other configs' rows only (every coefficient the remaining
    rows carry is fitted: at least one config)."""
    out: list[dict[str, float]] = [{} for _ in rs.rows]
    for name in {r["name"] for r in rs.rows}:
        others = [i for i, r in enumerate(rs.rows) if r["name"] != name]
        mine = [i for i, r in enumerate(rs.rows) if r["name"] == name]
        coefficients = fit_coefficients(rs.subset(others), min_configs=1).coefficients
        calib = Calibration("", "", 0.0, "", "", "", coefficients)
        for i in mine:
            out[i] = predict_benchmark(rs.exps[i], rs.rows[i], calib, rs.feats[i], rs.card)
    return out


def fit_row(r: dict[str, Any], p: dict[str, float], loo: dict[str, float], batch: tuple[int, int]) -> dict[str, Any]:
    """One row of the table's `fit`: [measured, in-sample, leaving its config out] per quantity."""
    def three(measured: float, key: str, digits: int) -> list[float]:
        return [round(measured, digits), round(p[key], digits), round(loo[key], digits)]

    return {"name": r["name"], "batch": "x".join(map(str, batch)), "peak_clean": not stepped_down(r),
            "peak_gib": three(r["peak_gpu_gib"], "peak_gib", 2), "step_s": three(measured_step_s(r), "step_s", 3),
            "eval_batch_s": three(r["eval_gen_s"], "eval_batch_s", 2),
            "run_trial_s": three(r["run_trial_s"], "run_trial_s", 1)}


def fit_notes(rs: RowSet, calib: Calibration, previous: Calibration | None) -> str:
    """The table's notes: the rows, what backs each coefficient, the worst errors in-sample and leaving a config out."""
    left_out = sorted({r["name"] for r in rs.rows if stepped_down(r)})
    kept = [n for n, b in calib.backing.items() if b.startswith("kept")]
    errors = worst_errors(calib.fit)
    return (f"Rows: {len(rs.rows)} of {len({r['name'] for r in rs.rows})} configs on one {calib.card}. "
            "Coefficients and their backing: " + "; ".join(f"{n} {v:.4g} ({calib.backing[n]})"
                                                          for n, v in calib.coefficients.items()) + ". "
            f"Left out of the memory fit (peak includes an OOM'd larger micro-batch): {', '.join(left_out) or 'none'}. "
            + (f"Kept from {Path(previous.path).name or 'the previous table'} (measured {previous.measured}): "
               f"{', '.join(kept)}. " if kept and previous else "")
            + f"Worst relative errors in-sample / leaving each config out: {errors}. "
            "Features at each row's effective micro-batch and accumulation; memory sized for the plain loss.")


def worst_errors(fit: list[dict[str, Any]]) -> str:
    def worst(key: str, column: int) -> float:
        return max(abs(f[key][column] / f[key][0] - 1) for f in fit if key != "peak_gib" or f["peak_clean"])

    return ", ".join(f"{k.removesuffix('_s').removesuffix('_gib').replace('_', ' ')} ±{worst(k, 1):.0%} / ±{worst(k, 2):.0%}"
                     for k in ("peak_gib", "step_s", "eval_batch_s", "run_trial_s"))


def save_calibration(calib: Calibration, path: Path | None = None) -> Path:
    path = Path(path or calibration_path(calib.key, *calib.families[:1]))  # the family's table: <card>[-<family>].json
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in asdict(calib).items() if k != "path"}
    data["coefficients"] = {k: float(f"{v:.6g}") for k, v in calib.coefficients.items()}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def predict_benchmark(exp: ExperimentConfig, row: dict[str, Any], calib: Calibration, f: Features | None = None,
                      card: Card | None = None) -> dict[str, float]:
    """What the plan says for a `gpu_configs.py` run of `exp` (its steps, one eval batch), to compare with `row`."""
    card = card or card_of(calib.card)
    c = calib.coefficients
    batch, accum = row_batch(exp, row)
    f = f or features(exp, model_dims(exp.model.architecture, exp.model.checkpoint), batch=batch)
    train, gen = peaks(f, c)
    step = accum * micro_batch_s(f, c, card)
    ev = eval_batch_s(f, c, card)
    train_s = (row.get("optimizer_steps") or 3) * step + c["first_step_extra_s"]
    start = (1 + failed_attempts(row)) * load_s(c) + failed_attempts(row) * c["first_step_extra_s"]
    return {"peak_gib": max(train, gen), "train_peak_gib": train, "step_s": step, "train_s": train_s,
            "eval_batch_s": ev, "run_trial_s": start + train_s + ev}


def row_batch(exp: ExperimentConfig, row: dict[str, Any]) -> tuple[int, int]:
    """(micro-batch, accumulation) a benchmark row really trained with (its eff_* fields), else the config's."""
    t = exp.training
    return (int(row.get("eff_train_batch_size") or t.per_device_train_batch_size),
            int(row.get("eff_gradient_accumulation_steps") or t.gradient_accumulation_steps))


def failed_attempts(row: dict[str, Any]) -> int:
    """How many micro-batches a row's trial tried and gave up on (CUDA OOM) before the one it trained with."""
    if row.get("attempts"):  # gpu_configs.py rows since it counts them
        return max(0, int(row["attempts"]) - 1)
    return str(row.get("eff_notes") or "").count("CUDA OOM at per-device batch")


def stepped_down(row: dict[str, Any]) -> bool:
    """Whether a row's peak includes a failed larger micro-batch: its trial ran out of memory first, and the row comes
    from gpu_configs.py before it reset the peak at each attempt (rows without `attempts`), so the peak is no
    measurement of the batch the trial ran."""
    oom = failed_attempts(row) > 0 or "ran out of memory" in str(row.get("eff_speed_notes") or "")
    return oom and "attempts" not in row


def measure(search_space: str, only: list[str] | None, steps: str) -> tuple[list[dict[str, Any]], str]:
    """Run gpu_configs.py (each config in a fresh process) on this machine's GPU; (its rows, the rows' file)."""
    out = Path(tempfile.mkdtemp(prefix="calibrate-")) / "bench.json"
    names = [c.name for c in load_search_space(Path(search_space), only)]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_configs.py"), "--steps", steps, "--out", str(out),
           "--search-space", str(search_space), "--only", *names]
    print("calibrating:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=False)
    if not out.is_file():
        raise PlanError("the calibration run wrote no results; see its output above")
    return json.loads(out.read_text()), str(out)


def previous_table(rows: list[dict[str, Any]], experiments: dict[str, ExperimentConfig]) -> Calibration | None:
    """The card's table so far for the rows' family (memory coefficients the new rows can't give, from OOM-contaminated
    peaks, are kept from it)."""
    known = [r for r in rows if r.get("name") in experiments]
    if not known:
        return None
    family = FAMILIES[experiments[known[0]["name"]].model.architecture]
    try:
        return load_calibration(card_of(str(known[0].get("card", ""))).key, family)
    except PlanError:
        return None


def format_fit(calib: Calibration) -> str:
    """The fit as a markdown table: measured / in-sample, error (leaving the row's config out, error)."""
    def cell(triple: list[float], digits: int, clean: bool = True) -> str:
        measured, fitted, loo = triple
        if not clean:
            return f"{measured:.{digits}f} includes a failed larger batch; fit {fitted:.{digits}f}"
        return f"{measured:.{digits}f} / {fitted:.{digits}f} {fitted / measured - 1:+.0%} ({loo / measured - 1:+.0%})"

    lines = ["| config | batch | step s meas / fit (LOO) | eval batch s meas / fit (LOO) | run_trial s meas / fit (LOO) "
             "| peak GiB meas / fit (LOO) |", "|---|---|---|---|---|---|"]
    for f in calib.fit:
        lines.append(f"| {f['name']} | {f['batch']} | {cell(f['step_s'], 3)} | {cell(f['eval_batch_s'], 2)} | "
                     f"{cell(f['run_trial_s'], 1)} | {cell(f['peak_gib'], 2, f['peak_clean'])} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--measure", action="store_true", help="run gpu_configs.py on this machine's GPU, then fit")
    what.add_argument("--rows", nargs="+", metavar="JSON", help="stored gpu_configs.py rows to fit (a list of rows, "
                      "or multi_gpu_grid.py's summary: its one-at-a-time pass's rows)")
    p.add_argument("--search-space", default=str(ROOT / "search_spaces"))
    p.add_argument("--only", nargs="+", metavar="NAME")
    p.add_argument("--out", help="the table to write (default trainables/driver/calibration/<card>.json)")
    p.add_argument("--measured", default=None, help="date of the rows (default today)")
    p.add_argument("--command", default="", help="how the rows were measured, for the table")
    return p.parse_args(argv)


def stored_rows(path: str) -> list[dict[str, Any]]:
    """gpu_configs.py's rows from a results file: a list of rows, or multi_gpu_grid.py's one-at-a-time pass."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict):
        trials = data["passes"]["one_at_a_time"]["trials"]
        return [t["bench_row"] for t in trials.values() if t.get("bench_row")]
    return data


def rows_label(path: str) -> str:
    return path + (" (its one-at-a-time pass)" if isinstance(json.loads(Path(path).read_text()), dict) else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs = load_search_space(Path(args.search_space), args.only)
    experiments = {c.name: apply_mode(c, "full")[0] for c in configs}
    if args.measure:
        rows, source = measure(args.search_space, args.only, os.environ.get("TUNE_MAIN7_CALIBRATE_STEPS", "3"))
        command = " ".join(["python tune_main7.py plan --calibrate", *(["--only", *args.only] if args.only else [])])
    else:
        rows = [r for path in args.rows for r in stored_rows(path)]
        source, command = " + ".join(rows_label(path) for path in args.rows), args.command
    calib = fit_calibration(rows, experiments, source=source, measured=args.measured or dt.date.today().isoformat(),
                            keep_memory_from=previous_table(rows, experiments), command=command)
    path = save_calibration(calib, args.out)
    print(f"wrote {path} for {calib.card}")
    print(format_fit(calib))
    return 0


if __name__ == "__main__":
    from trainables.errors import UserError

    try:
        sys.exit(main())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
