"""The pre-flight plan: each trial's GPU memory and time before it starts, and which trials share a GPU.

Nothing here allocates a model, imports torch or needs a GPU. The steps, one module each:
- features (trainables.driver.features): from the model's shape (its family's shapes module) and the experiment's
  settings, the *workload features* of one trial: fixed bytes, activation and logit bytes of one training
  micro-batch, bytes of one generation batch, and the work of a step and of an eval batch;
- predictions (trainables.driver.calibration): the card's calibration table turns features into GiB and seconds;
- the trial's plan (here): which micro-batch the trial will train with (speed's candidates under its cap), its
  steps, evaluations, peak and time, and whether the fast evaluation's merged copy fits;
- packing (trainables.driver.packing): GPU fractions, memory caps, longest first, the grid's wall-clock;
- the table (here, `format_forecast`) and what each trial carries (`placements`, applied in the trial by
  trainables.trial.placement).

What the predictions rest on. The H100 table (trainables/driver/calibration/h100.json, its `backing` and `notes`)
was fitted on CPU, with no GPU, from 14 stored rows of real-size seq2seq runs on one H100 (7 configs, each measured
in two runs of 2026-11-26; benchmarks/results/, refitted by benchmarks/fit_calibration.py). Its coefficients, and
how many rows back each (a coefficient is fitted only on clean rows of at least 2 configs that carry its feature):
- mem_act (activations held at the training peak): 4 rows of 4 configs without gradient checkpointing, fitted with
  the other clean rows too (the checkpointed configs' checkpoints); mem_logit (the logits' copies): 10 clean rows of
  7 configs; mem_gen (a generation batch): 4 rows of 2 configs, the only ones whose generation sets the peak: the
  weakest-backed coefficient; reserved_ratio (allocator cache, for the "tight" note): median of 10 clean rows;
- s_per_call and flop_utilisation (a training micro-batch), gen_s_per_call (an eval batch, the beams' vocabulary
  work included), load_s (per model load): 14 rows of 7 configs each; first_step_extra_s: median of 14 rows;
- stated, in no row: trial_start_s 8 s (a Ray trial's process start), packed_slowdown 0.35 (four configs packed,
  2026-11-25), the bandwidth term at 60% of the datasheet, FRAGMENTATION, packing's HEADROOM and CONTEXT_GIB.
Dropped for want of support (17 coefficients before): a per-step constant, an eval-batch constant and an n-gram
term (each fitted to 0), a separate per-vocabulary generation term and a per-parameter load term (neither lowered
the leave-one-config-out error), a separate activation coefficient for checkpointed models (merged into mem_act
once their feature counts the checkpoints only). Other cards borrow the H100's table, the time terms scaled by
datasheet ratios. Decoder-only models (the causal_lm family) have no rows yet: their predictions put the family's
own features through these seq2seq coefficients, and the printed table says so, until `plan --calibrate
--search-space search_spaces/llm` on a GPU writes that family's own table (calibration/<card>-causal_lm.json), which
the plan then uses for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.config import ExperimentConfig
from trainables.driver.calibration import (CARDS, Calibration, Card, PlanError, eval_batch_s, family_calibration,
                                           load_s, micro_batch_s, peaks)
from trainables.driver.features import Features, features, model_dims
from trainables.driver.packing import PACKED_SLOWDOWN, longest_first, makespan, pack
from trainables.trial.families import FAMILIES, shapes_of
from trainables.trial.families.shapes import ModelDims
from trainables.trial.placement import CONTEXT_GIB, merged_copy_fits

# Allocated memory needs some slack for fragmentation: reserved/allocated ranged 1.12-1.38 on the H100 runs.
FRAGMENTATION = 1.10


@dataclass
class TrialPlan:
    name: str
    arch: str
    family: str  # the model family's module (trainables.trial.families): "seq2seq" | "causal_lm"
    params: int
    dims_source: str
    peak_gib: float  # predicted peak allocated (training or generation, whichever is larger)
    peak_phase: str
    optimizer_steps: int
    evaluations: int
    train_s: float
    eval_s: float  # all evaluations together
    trial_s: float
    fits: bool
    batch: tuple[int, int] = (0, 0)  # (micro-batch, accumulation) the trial is predicted to train with
    configured_batch: tuple[int, int] = (0, 0)
    failed_attempts: int = 0  # larger micro-batches tried first, each predicted to run out of memory under the cap
    cap_gib: float | None = None  # the allocator cap the micro-batch was chosen under (None: configured batch kept)
    gpu_fraction: float = 1.0
    memory_cap_gib: float | None = None
    merged_copy: bool = False  # evaluation generates from the fast evaluation's merged bf16 copy
    notes: list[str] = field(default_factory=list)


def count_evaluations(steps_per_epoch: int, epochs: int, eval_steps: int | None) -> int:
    """Evaluations of one trial: every eval_steps optimizer steps, plus every epoch's end (one when they coincide)."""
    total = steps_per_epoch * epochs
    at = {e * steps_per_epoch for e in range(1, epochs + 1)}
    if eval_steps:
        at |= set(range(eval_steps, total + 1, eval_steps))
    return len(at)


def batch_attempts(exp: ExperimentConfig, card: Card, packed_cap_gib: float | None = None
                   ) -> tuple[list[tuple[int, int]], float | None]:
    """The micro-batches (batch, accumulation) a trial on `card` tries, in order, and the allocator cap they must fit
    under. With speed's micro_batch on (trainables.trial.speed.batches): its candidates, largest first, under
    `speed.memory_gib` (or the card, or a packed trial's share, whichever is tighter); unpacked, the OOM back-off then
    halves below the configured batch (trainables.trial.backoff), packed it stops there (PackedTrialOverrun). With
    speed or micro_batch off, or on no card: the configured batch only, and no cap (None)."""
    from trainables.trial.backoff import halve_batch
    from trainables.trial.speed.batches import batch_candidates

    t, o = exp.training, exp.speed
    configured = (t.per_device_train_batch_size, t.gradient_accumulation_steps)
    if not (o.enabled and o.micro_batch and card.memory_gib):
        return [configured], None
    tries = batch_candidates(*configured)
    while not packed_cap_gib and tries[-1][0] > 1:
        tries.append(halve_batch(*tries[-1]))
    caps = [o.memory_gib, card.memory_gib - CONTEXT_GIB, *([packed_cap_gib] if packed_cap_gib else [])]
    return tries, min(caps)


def choose_batch(exp: ExperimentConfig, d: ModelDims, c: dict[str, float], card: Card, packed_cap_gib: float | None = None
                 ) -> tuple[tuple[int, int], int, float | None, Features]:
    """(the micro-batch the trial will train with, how many larger ones fail first, the cap, its features): the first
    of batch_attempts whose predicted training peak, with the allocator's fragmentation, fits under the cap."""
    tries, cap = batch_attempts(exp, card, packed_cap_gib)
    for i, batch in enumerate(tries):
        f = features(exp, d, batch=batch[0])
        if cap is None or peaks(f, c)[0] * FRAGMENTATION <= cap or i == len(tries) - 1:
            return batch, i, cap, f
    raise AssertionError("unreachable: the last attempt is returned")


def merged_copy_decision(exp: ExperimentConfig, d: ModelDims, f: Features, c: dict[str, float], card: Card,
                         batch: int, packed_cap_gib: float | None = None) -> tuple[Features, str | None]:
    """The features generation really runs with, and a note where the fast evaluation's merged bf16 copy does not fit
    beside the training model under the trial's cap (placement.merged_copy_fits: the speed layer's rule): then
    generation runs from the training model (4-bit dequantized per call, no copy in memory)."""
    if not f.merged_gib:
        return f, None
    caps = [card.memory_gib - CONTEXT_GIB if card.memory_gib else None, exp.speed.memory_gib, packed_cap_gib]
    cap = min((x for x in caps if x), default=None)
    generation = c["mem_gen"] * f.gen_gib
    if merged_copy_fits(f.static_gib * FRAGMENTATION, f.merged_gib * FRAGMENTATION, generation * FRAGMENTATION, cap):
        return f, None
    return features(exp, d, batch=batch, merged=False), (
        f"the fast evaluation's merged bf16 copy ({f.merged_gib:.1f} GiB) does not fit beside the training model "
        f"({f.static_gib:.1f} GiB) and a generation batch under the {cap:.1f} GiB cap: generation from the training model")


def plan_trial(exp: ExperimentConfig, n_train: int, n_dev: int, calib: Calibration, card: Card,
               model_path: str | None = None, packed_cap_gib: float | None = None) -> TrialPlan:
    t = exp.training
    d = model_dims(exp.model.architecture, exp.model.checkpoint, model_path)
    c = calib.coefficients
    (batch, accum), failed, cap, f = choose_batch(exp, d, c, card, packed_cap_gib)
    f, merged_note = merged_copy_decision(exp, d, f, c, card, batch, packed_cap_gib)
    train_peak, gen_peak = peaks(f, c)
    micro = math.ceil(n_train / batch)
    steps_per_epoch = max(1, math.ceil(micro / accum))
    evals = count_evaluations(steps_per_epoch, t.num_train_epochs, t.eval_steps)
    train_s = t.num_train_epochs * micro * micro_batch_s(f, c, card) + c["first_step_extra_s"]
    eval_s = evals * math.ceil(n_dev / t.per_device_eval_batch_size) * eval_batch_s(f, c, card)
    # each failed attempt: a model load and a first step that runs out of memory (backoff.retry_on_oom reloads)
    start = c["trial_start_s"] + (1 + failed) * load_s(c) + failed * c["first_step_extra_s"]
    peak = max(train_peak, gen_peak)
    plan = TrialPlan(
        name=exp.name, arch=d.arch, family=FAMILIES[d.arch], params=f.params, dims_source=d.source, peak_gib=peak,
        peak_phase="train" if train_peak >= gen_peak else "gen", optimizer_steps=steps_per_epoch * t.num_train_epochs,
        evaluations=evals, train_s=train_s, eval_s=eval_s, trial_s=start + train_s + eval_s,
        fits=peak * FRAGMENTATION + CONTEXT_GIB <= card.memory_gib if card.memory_gib else True,
        batch=(batch, accum), configured_batch=(t.per_device_train_batch_size, t.gradient_accumulation_steps),
        failed_attempts=failed, cap_gib=cap, merged_copy=f.merged_gib > 0,
    )
    plan.notes += [merged_note] if merged_note else []
    add_memory_notes(plan, train_peak, c, card)
    return plan


def add_memory_notes(plan: TrialPlan, train_peak: float, c: dict[str, float], card: Card) -> None:
    """What the table says below a trial whose batch, cap or card is tight."""
    (batch, accum), configured, cap = plan.batch, plan.configured_batch, plan.cap_gib
    if cap is not None and train_peak * FRAGMENTATION > cap:
        plan.fits = False
        plan.notes.append(f"over the {cap:.1f} GiB cap even at micro-batch {batch}: CUDA OOM expected")
    elif batch < configured[0]:
        plan.notes.append(f"the configured micro-batch {configured[0]}x{configured[1]} is predicted over the "
                          f"{cap:.1f} GiB cap: the OOM back-off halves it to {batch}x{accum} (on a whole card only: "
                          "not packed)")
    if plan.fits and card.memory_gib and plan.peak_gib * c["reserved_ratio"] + CONTEXT_GIB > card.memory_gib:
        plan.notes.append("tight: fits, but not with the allocator's usual cache; a few slower steps are possible")
    elif not plan.fits and cap is None:
        plan.notes.append("CUDA OOM expected at the configured batch; the OOM back-off halves it (same effective batch)")


@dataclass
class GridForecast:
    card: Card
    calibration: Calibration  # the card's default table (calibration/<card>.json, or the H100's)
    scaled: bool
    tables: dict[str, tuple[Calibration, bool]]  # model family -> the table its trials were planned with, scaled
    gpus: int
    n_train: int
    n_dev: int
    trials: list[TrialPlan]
    packed: bool
    sequential_s: float
    packed_s: float


def forecast(experiments: list[ExperimentConfig], data_dir: Path, card: Card, calib: Calibration, scaled: bool,
             gpus: int = 1, pack_trials: bool = True, model_paths: dict[str, str] | None = None) -> GridForecast:
    from trainables.data import read_split

    n_train = len(read_split(Path(data_dir), "train", warn=False).frame)  # the run's own checks already warned
    n_dev = len(read_split(Path(data_dir), "dev", warn=False).frame)
    paths = model_paths or {}
    tables = {family: family_calibration(card, family) or (calib, scaled)
              for family in sorted({FAMILIES[e.model.architecture] for e in experiments})}

    def table(e: ExperimentConfig) -> Calibration:
        return tables[FAMILIES[e.model.architecture]][0]

    trials = [plan_trial(e, n_train, n_dev, table(e), card, paths.get(e.model.checkpoint)) for e in experiments]
    gpus = max(1, gpus)
    packed = pack(trials, card.memory_gib, enabled=pack_trials, gpus=gpus)
    by_name = {e.name: e for e in experiments}
    for i, t in enumerate(trials):  # under a packed share tighter than its cap a trial may run a smaller micro-batch
        if t.memory_cap_gib and t.cap_gib and t.memory_cap_gib < t.cap_gib:
            e = by_name[t.name]
            again = plan_trial(e, n_train, n_dev, table(e), card, paths.get(e.model.checkpoint),
                               packed_cap_gib=t.memory_cap_gib)
            again.gpu_fraction, again.memory_cap_gib = t.gpu_fraction, t.memory_cap_gib
            trials[i] = again
    trials = longest_first(trials)
    slow = calib.coefficients.get("packed_slowdown", PACKED_SLOWDOWN)
    sequential = makespan(trials, gpus, 0.0, packed=False)
    packed_s = makespan(trials, gpus, slow, packed=True) if packed else sequential
    if packed and packed_s > 0.9 * sequential:  # sharing a card would not pay: one trial per GPU
        packed = pack(trials, card.memory_gib, enabled=False)
        packed_s = sequential
    return GridForecast(card=card, calibration=calib, scaled=scaled, tables=tables, gpus=gpus, n_train=n_train,
                        n_dev=n_dev, trials=trials, packed=packed, sequential_s=sequential, packed_s=packed_s)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def format_forecast(fc: GridForecast) -> str:
    c = fc.calibration
    lines = [f"Plan for {fc.gpus} x {fc.card.name} ({fc.card.memory_gib:.1f} GiB), data {fc.n_train} train / "
             f"{fc.n_dev} dev rows; calibration {Path(c.path).name or c.key} ({c.card}, measured {c.measured})"]
    if fc.scaled:
        lines.append(f"  no calibration for this card: the H100's, with FLOP terms scaled by dense bf16 "
                     f"{CARDS['h100'].bf16_tflops:.0f}/{fc.card.bf16_tflops:.0f} TFLOP/s and memory-bandwidth terms by "
                     f"{CARDS['h100'].bandwidth_tbs}/{fc.card.bandwidth_tbs} TB/s; per-call overheads as measured there")
    lines += uncalibrated_families(fc)
    head = ("config", "arch", "params", "batch", "peak GiB", "fits", "steps", "evals", "train", "eval", "trial",
            "GPU share")
    rows = []
    for t in fc.trials:
        share = f"{t.gpu_fraction:.2f} (cap {t.memory_cap_gib:.1f} GiB)" if t.memory_cap_gib else "1 (whole card)"
        rows.append((t.name, t.arch, f"{t.params / 1e6:.0f}M", f"{t.batch[0]}x{t.batch[1]}",
                     f"{t.peak_gib:.1f} ({t.peak_phase})",
                     ("tight" if any(n.startswith("tight") for n in t.notes) else "yes") if t.fits else "NO", str(t.optimizer_steps),
                     str(t.evaluations), duration(t.train_s), duration(t.eval_s), duration(t.trial_s), share))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(head, widths)))
    lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    for t in fc.trials:
        lines += [f"  note {t.name}: {n}" for n in t.notes]
    tried = [t for t in fc.trials if t.failed_attempts]
    if tried:
        lines.append("  batch: the micro-batch x accumulation each trial is predicted to train with: the first of the "
                     "speed plan's splits whose training peak fits its cap; larger ones are tried first and run out of "
                     "memory (" + ", ".join(f"{t.name} {t.failed_attempts}" for t in tried) +
                     "), each costing a model load and a step, counted in `trial`")
    gpu_hours = sum(t.trial_s for t in fc.trials) / 3600
    lines.append(f"Grid: {len(fc.trials)} trials, {gpu_hours:.1f} GPU-hours; one trial per GPU at a time: "
                 f"{duration(fc.sequential_s)} wall-clock" + (
                     f"; packed (longest first, fractions above): {duration(fc.packed_s)} "
                     f"({fc.sequential_s / max(fc.packed_s, 1e-9):.1f}x, assuming each co-running trial slows the "
                     f"others by {c.coefficients.get('packed_slowdown', PACKED_SLOWDOWN):.0%})" if fc.packed else
                     "; packing: off (--no-pack), no two trials fit one card together, or sharing would not "
                     "shorten the grid: one trial per GPU"))
    lines.append("Times are upper bounds: every input at encoder_max_len, generation to max_length, early stopping "
                 "ignored. Peak = allocated; the card also needs the allocator's cache and a CUDA context.")
    return "\n".join(lines)


def uncalibrated_families(fc: GridForecast) -> list[str]:
    """A line per family with its own table, and per family whose table's rows never measured it: what its
    predictions rest on."""
    lines = [f"  {family}: calibration {Path(c.path).name} ({c.card}, measured {c.measured}"
             f"{'; scaled as above' if scaled else ''})" for family, (c, scaled) in fc.tables.items()
             if c is not fc.calibration]
    for family, (c, _) in fc.tables.items():
        if family in c.families:
            continue
        measured = ", ".join(c.families) or "unrecorded families"
        trials = [t for t in fc.trials if t.family == family]
        lines.append(f"  {family} ({', '.join(t.name for t in trials)}): not calibrated on a GPU. Memory and time rest "
                     f"on {Path(c.path).name or c.key}'s {measured} coefficients applied to this family's own features "
                     f"({shapes_of(trials[0].arch).FEATURES}; weights and the merged copy in exact bytes): memory = "
                     "mem_act, mem_logit, mem_gen; time = s_per_call, flop_utilisation, gen_s_per_call and the "
                     "bandwidth term; model load = load_s, fitted on models of at most 0.6B parameters (larger "
                     "checkpoints load longer: not counted)")
    return lines


def summary_line(fc: GridForecast) -> str:
    worst = max(fc.trials, key=lambda t: t.peak_gib)
    misfits = [t.name for t in fc.trials if not t.fits]
    return (f"plan: {len(fc.trials)} trials on {fc.gpus} x {fc.card.name}: peak {worst.peak_gib:.1f} GiB "
            f"({worst.name}){', does NOT fit: ' + ', '.join(misfits) if misfits else ', all fit'}; "
            f"{duration(fc.sequential_s)} one at a time"
            + (f", {duration(fc.packed_s)} packed" if fc.packed else ", no packing") +
            " (upper bound; `python tune_main7.py plan` for the table)")


def placements(fc: GridForecast, packed: bool) -> dict[str, dict[str, Any]]:
    """What each trial gets, keyed by experiment name; travels in the trials' `run` config."""
    return {t.name: {"gpu": t.gpu_fraction if packed else 1.0,
                     "memory_cap_gib": t.memory_cap_gib if packed else None,
                     "predicted_peak_gib": round(t.peak_gib, 2), "predicted_trial_s": round(t.trial_s, 1),
                     "card": fc.card.name} for t in fc.trials}


def calibrate(args) -> int:
    """`plan --calibrate`: benchmarks/fit_calibration.py --measure in this process (gpu_configs.py's real-size runs
    on this machine's GPU, then the fit, written to trainables/driver/calibration/<card>.json)."""
    import importlib.util
    import sys

    import torch

    if not torch.cuda.is_available():
        raise PlanError("plan --calibrate measures this machine's GPU, and it has none; plan with --card instead")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "fit_calibration.py"
    if not script.is_file():
        raise PlanError(f"{script}: not found; --calibrate needs the repository checkout's benchmarks/ folder")
    spec = importlib.util.spec_from_file_location("benchmarks.fit_calibration", script)
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module.main(["--measure", "--search-space", str(args.search_space), *(["--only", *args.only] if args.only else [])])
