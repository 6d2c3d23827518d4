"""Prove all seven configs on a GPU: real batch, accumulation, lengths, beams and LoRA/QLoRA settings.

For each experiment in search_spaces/ (or `--only NAME...`) this runs a few optimizer steps and one evaluation
with generation through the project's own trainable (`trainables.trial.recipe.run_trial`, called directly without
Ray), on a stand-in model of the REAL size (random weights, the real checkpoint's dimensions and vocabulary
size, its family's `build_standin(..., size="real")`) and synthetic Korean-like data that fills the
config's encoder and decoder lengths after truncation, so memory is the worst case.

What differs from `--mode full` (everything else is the config as `apply_mode(cfg, "full")` gives it):
  - num_train_epochs = 1, with a train set of batch x accumulation x --steps rows (one epoch = --steps steps);
  - evaluation at the epoch's end only (eval_steps = None), early stopping off, logging every step;
  - one dev batch (per_device_eval_batch_size rows), generated with generation.min_length = max_length, so that
    random weights can't stop early at EOS: generation time is the worst case for the config's length and beams.

Each config runs in a fresh process (`--one NAME`, internal) so GPU memory is fully freed between them; the
parent collects one JSON line per config, writes them to `--out` after each config (a timeout keeps what ran),
and prints a markdown table last.

    python benchmarks/gpu_configs.py                          # all seven, real size, needs a CUDA GPU
    python benchmarks/gpu_configs.py --only 01_baseline_kobart_rtx3090 --steps 3 --out $OUT/bench.json
    python benchmarks/gpu_configs.py --tiny --only 01_baseline_kobart_rtx3090   # CPU test of the script
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trainables.trial.telemetry import GPU_FIELDS, THROUGHPUT_FIELDS  # noqa: E402  (light: no torch at import)

RESULT_PREFIX = "BENCH_RESULT "
BENCH_CACHE = "/tmp/bench-cache"  # stand-ins built once per architecture, shared by every benchmark script
MEMORY_LIMIT_GIB = 22.0  # the seed team's RTX 3090 (24 GB) less headroom
TINY_LIMITS = {"encoder_max_len": 64, "decoder_max_len": 16}
TINY_PROMPT_LIMIT = 192  # a decoder-only config's encoder_max_len: room for its chat template and a dialogue


def say(*parts: Any) -> None:
    print(*parts, flush=True)


# ---------------------------------------------------------------------------------------------------
# Synthetic Korean-like data


def _syllables(rng: random.Random, n: int) -> list[str]:
    return [chr(0xAC00 + rng.randrange(11172)) for _ in range(n)]


def lexicon_text(seed: int = 0, size: int = 600) -> list[str]:
    """A fixed set of random Hangul 'words' (1-4 syllables from a pool of 400)."""
    rng = random.Random(seed)
    pool = _syllables(rng, 400)
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 4))) for _ in range(size)]


def sentence_text(rng: random.Random, words: list[str], n: int) -> str:
    return " ".join(rng.choice(words) for _ in range(n)) + rng.choice([".", "?", "."])


def dialogue_text(rng: random.Random, words: list[str], turns: int) -> str:
    lines = []
    for i in range(turns):
        speaker = "#Person1#" if i % 2 == 0 else "#Person2#"
        text = sentence_text(rng, words, rng.randint(4, 12))
        if rng.random() < 0.05:
            text += " #PhoneNumber#"
        lines.append(f"{speaker}: {text}")
    return "\n".join(lines)


def _summary(rng: random.Random, words: list[str], n_words: int) -> str:
    return "#Person1#는 " + sentence_text(rng, words, n_words) + " #Person2#는 " + sentence_text(rng, words, n_words)


def tokenizer_corpus(rows: int = 300) -> list[str]:
    """The fixed text a stand-in tokenizer is trained on (same every run: the stand-in cache hits)."""
    rng, words = random.Random(1), lexicon_text()
    return [dialogue_text(rng, words, 12) for _ in range(rows)] + [_summary(rng, words, 15) for _ in range(rows)]


def write_data(data_dir: Path, tokenizer, prefix: str, enc_len: int, dec_len: int, n_train: int, n_dev: int,
               seed: int = 0) -> dict[str, int]:
    """train.csv/dev.csv whose every dialogue and summary is at least enc_len/dec_len tokens long (measured
    with the trial's own tokenizer and prefix), so truncation fills both lengths: the worst case for memory."""
    import pandas as pd

    rng, words = random.Random(seed), lexicon_text()

    def long_enough(make, extend, target: int, texts_prefix: str, count: int) -> list[str]:
        texts = [make() for _ in range(count)]
        for _ in range(20):
            lengths = [len(ids) for ids in tokenizer([texts_prefix + t for t in texts], return_token_type_ids=False)["input_ids"]]
            short = [i for i, n in enumerate(lengths) if n < target + 2]
            if not short:
                return texts
            for i in short:
                texts[i] = extend(texts[i], target, lengths[i])
        raise RuntimeError(f"could not make texts {target} tokens long")

    def grow_dialogue(text: str, target: int, have: int) -> str:
        more = max(2, int((target - have) / 8) + 2)
        return text + "\n" + dialogue_text(rng, words, more)

    def grow_summary(text: str, target: int, have: int) -> str:
        return text + " " + sentence_text(rng, words, max(3, (target - have) + 2))

    n = n_train + n_dev
    dialogues = long_enough(lambda: dialogue_text(rng, words, 10), grow_dialogue, enc_len, prefix, n)
    summaries = long_enough(lambda: _summary(rng, words, 8), grow_summary, dec_len, "", n)
    frame = pd.DataFrame({
        "fname": [f"bench_{i}" for i in range(n)], "dialogue": dialogues, "summary": summaries,
        "topic": [rng.choice(["일상", "여행", "쇼핑", "건강"]) for _ in range(n)],
    })
    data_dir.mkdir(parents=True, exist_ok=True)
    frame.iloc[:n_train].assign(fname=[f"train_{i}" for i in range(n_train)]).to_csv(data_dir / "train.csv", index=False)
    frame.iloc[n_train:].assign(fname=[f"dev_{i}" for i in range(n_dev)]).to_csv(data_dir / "dev.csv", index=False)
    label_lens = [min(len(ids), dec_len) for ids in tokenizer(text_target=summaries[:n_train])["input_ids"]]
    input_lens = [min(len(ids), enc_len) for ids in tokenizer([prefix + d for d in dialogues[:n_train]])["input_ids"]]
    return {"train_rows": n_train, "dev_rows": n_dev, "train_label_tokens": sum(label_lens),
            "train_input_tokens": sum(input_lens), "min_input_len": min(input_lens), "min_label_len": min(label_lens)}


# ---------------------------------------------------------------------------------------------------
# One config, in this process


def bench_config(cfg, args, placement: dict[str, Any] | None = None) -> dict[str, Any]:
    """One config's benchmark row. `placement`: the trial's share of the GPU as the driver planned it (a Placement's
    fields; multi_gpu_grid.py passes the Ray trial's run.placement entry): the trial caps itself at it through the
    project's own path (recipe.decide_trial_settings), and its eff_* placement fields land in the row."""
    import torch

    from trainables.trial import recipe
    from trainables.trial.placement import PackedTrialOverrun
    from trainables.config import apply_mode
    from trainables.trial.families import family_of

    size = "tiny" if args.tiny else "real"
    exp, _ = apply_mode(cfg, "full")
    t, tok, gen = exp.training, exp.tokenizer, exp.generation
    t.num_train_epochs, t.eval_steps, t.early_stopping_patience, t.logging_steps = 1, None, None, 1
    family = family_of(exp.model.architecture)  # the config's model family builds its stand-in, loads its tokenizer
    if args.tiny:  # short lengths so the script can be tested on a CPU
        prompt_limit = TINY_LIMITS["encoder_max_len"] if family.name == "seq2seq" else TINY_PROMPT_LIMIT
        tok.encoder_max_len = min(tok.encoder_max_len, prompt_limit)
        tok.decoder_max_len = min(tok.decoder_max_len, TINY_LIMITS["decoder_max_len"])
        gen.max_length = min(gen.max_length, tok.decoder_max_len)
    asked_min_length = gen.min_length
    gen.min_length = gen.max_length  # worst case: random weights would otherwise stop early at EOS

    arch, checkpoint = exp.model.architecture, exp.model.checkpoint
    cuda = torch.cuda.is_available()
    t0 = time.time()
    # a benchmark needs no warm start (minutes for tiny models on a busy CPU; real sizes never get one)
    model_path = family.build_standin(arch, tokenizer_corpus(), Path(args.cache_dir), size=size, warm_start=False)
    build_s = time.time() - t0
    say(f"  [{exp.name}] stand-in {arch}-{size} ready in {build_s:.1f}s: {model_path}")

    tokenizer = family.load_tokenizer(str(model_path), exp)
    n_train = t.per_device_train_batch_size * t.gradient_accumulation_steps * args.steps
    n_dev = t.per_device_eval_batch_size
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-data-{exp.name}-"))
    data = write_data(data_dir, tokenizer, tok.input_prefix, tok.encoder_max_len, tok.decoder_max_len,
                      n_train, n_dev)
    say(f"  [{exp.name}] data: {n_train} train rows ({data['train_label_tokens']} label tokens, inputs >= "
        f"{data['min_input_len']} of {tok.encoder_max_len}), {n_dev} dev rows")

    from benchmarks.probes import BENCH_TIMING, TIMING
    from trainables.config import TrialConfig

    reports: list[dict[str, Any]] = []
    config = TrialConfig.from_ray({
        "experiment": exp.model_dump(),
        "run": {
            "mode": "full",
            "data_dir": str(data_dir),
            "models": {checkpoint: {"model_path": str(model_path),
                                    "model_source": f"standin:{arch}-{size} random weights (for {checkpoint})"}},
            "torch_threads": args.threads,
            "callbacks": [BENCH_TIMING],  # training and evaluation timing, through the trial's extension point
            **({"placement": {exp.name: placement}} if placement else {}),
        },
    })
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        if args.memory_cap_gib:  # behave like a smaller card: allocations past the cap raise CUDA OOM
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib * 2**30 / total))
    TIMING.clear()  # attempts are counted from here (a Ray worker may run several configs)
    t0 = time.time()
    error = None
    try:
        final = recipe.run_trial(config, lambda metrics, ckpt: reports.append(metrics))
    except PackedTrialOverrun:
        raise  # Ray must see it: the trial is retried on a whole GPU (trainables.driver.overrun)
    except Exception as err:  # an OOM at batch 1 or any other failure is a result too
        final, error = {}, f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    total_s = time.time() - t0
    timing = dict(TIMING) or {"step_ends": [], "peak_train": 0}

    last = reports[-1] if reports else {}
    eff = {k: v for k, v in {**last, **final}.items() if k.startswith("eff_")}
    ends = timing["step_ends"]
    train_s = (timing.get("train_end") or (ends[-1] if ends else None))
    train_s = train_s - timing["train_begin"] if train_s and "train_begin" in timing else None
    labels = data["train_label_tokens"]
    steady = None
    if len(ends) >= 2:  # leave out the first optimizer step (CUDA/cuBLAS warm-up, allocator growth)
        steady = round(labels * (len(ends) - 1) / len(ends) / (ends[-1] - ends[0]), 1)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    reserved = torch.cuda.max_memory_reserved() / 2**30 if cuda else None
    return {
        "name": exp.name,
        "card": torch.cuda.get_device_name(0) if cuda else "cpu",
        "size": size,
        "ok": error is None and bool(reports),
        "error": error,
        "peak_gpu_gib": round(peak, 2) if peak is not None else None,
        "peak_gpu_reserved_gib": round(reserved, 2) if reserved is not None else None,
        "peak_gpu_train_gib": round(timing["peak_train"] / 2**30, 2) if cuda else None,
        "fits_22gib": (peak <= MEMORY_LIMIT_GIB) if peak is not None else None,
        "train_label_tokens": labels,
        "train_s": round(train_s, 2) if train_s else None,
        "train_tok_s": round(labels / train_s, 1) if train_s else None,
        "train_tok_s_after_step1": steady,
        "optimizer_steps": len(ends),
        "eval_gen_s": round(timing["eval_runtime"], 2) if timing.get("eval_runtime") else None,
        "trainer_train_runtime_s": final.get("train_runtime"),  # includes the evaluation and checkpoint save
        "run_trial_s": round(total_s, 1),
        "attempts": timing.get("attempts", 0),  # > 1: the OOM back-off restarted the trial at a smaller micro-batch
        "last_attempt_s": round(time.perf_counter() - timing["attempt_started"], 1) if "attempt_started" in timing else None,
        "standin_build_s": round(build_s, 1),
        "settings": {
            "arch": arch, "train_batch": t.per_device_train_batch_size, "accumulation": t.gradient_accumulation_steps,
            "eval_batch": n_dev, "encoder_max_len": tok.encoder_max_len, "decoder_max_len": tok.decoder_max_len,
            "num_beams": gen.num_beams, "gen_max_length": gen.max_length,
            "gen_min_length": gen.min_length, "config_min_length": asked_min_length,
            "lora_rank": exp.qlora.lora_rank, "targets": exp.qlora.target_modules,
            "gradient_checkpointing": t.gradient_checkpointing,
        },
        "data": data,
        "eval": {k: v for k, v in (timing.get("eval_metrics") or {}).items() if k in ("eval_loss", "eval_gen_len")},
        "train_losses": [r.get("train_loss") for r in reports],
        # what each report carried from trainables.trial.telemetry (NVML on a GPU; throughput always)
        "telemetry": [{k: r[k] for k in (*GPU_FIELDS, *THROUGHPUT_FIELDS) if k in r} for r in reports],
        "memory_cap_gib": args.memory_cap_gib,
        **eff,
    }


# ---------------------------------------------------------------------------------------------------
# The driver: one subprocess per config


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("| config | card | peak GiB (reserved) | <= 22 GiB | train tok/s (after step 1) | eval+gen s | "
            "precision | 4-bit | batch x accum | unsloth | notes |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if not r.get("name"):
            continue
        peak = "-" if r.get("peak_gpu_gib") is None else f"{r['peak_gpu_gib']:.1f} ({r['peak_gpu_reserved_gib']:.1f})"
        fits = "-" if r.get("fits_22gib") is None else ("yes" if r["fits_22gib"] else "**no**")
        tok = "-" if r.get("train_tok_s") is None else f"{r['train_tok_s']:.0f} ({r.get('train_tok_s_after_step1') or 0:.0f})"
        batch = f"{r.get('eff_train_batch_size', '?')} x {r.get('eff_gradient_accumulation_steps', '?')}"
        unsloth = "yes" if r.get("eff_unsloth") else "no"
        notes = (r.get("error") or r.get("eff_notes") or "").replace("|", ";")
        lines.append(f"| {r['name']} | {r.get('card', '?')} | {peak} | {fits} | {tok} | {r.get('eval_gen_s', '-')} | "
                     f"{r.get('eff_precision', '-')} | {r.get('eff_load_in_4bit', '-')} | {batch} | {unsloth} | "
                     f"{notes[:160]} |")
    return "\n".join(lines)


def _config_command(args, name: str, cap_gib: float | None) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--steps", str(args.steps),
           "--cache-dir", str(args.cache_dir), "--search-space", str(args.search_space)]
    cmd += ["--tiny"] * args.tiny + ["--cpu-ok"] * args.cpu_ok
    if cap_gib:
        cmd += ["--memory-cap-gib", str(cap_gib)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd


def _run_config(args, name: str, cap_gib: float | None, quiet: bool = False) -> dict[str, Any]:
    """One config in a fresh process; its result row, with the process's wall-clock (start-up included)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore::FutureWarning,ignore::UserWarning"}
    began = time.time()
    proc = subprocess.Popen(_config_command(args, name, cap_gib), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=ROOT)
    row = None
    tail: list[str] = []
    for line in iter(proc.stdout.readline, ""):
        if line.startswith(RESULT_PREFIX):
            row = json.loads(line[len(RESULT_PREFIX):])
        else:
            tail = (tail + [line.rstrip()])[-15:]
            if (line.startswith("  [") and not quiet) or args.verbose:
                say(line.rstrip())
    rc = proc.wait()
    if row is None:
        row = {"name": name, "ok": False, "error": f"process exited {rc} without a result: " + " / ".join(tail[-5:])}
        say("\n".join(tail))
    row["process_wall_s"] = round(time.time() - began, 1)
    row["process_started_s"] = began
    return row


def packed_caps(args, names: list[str]) -> dict[str, float | None]:
    """Each config's memory cap when packed, from the plan (trainables/driver/plan.py, packing.py) for this card."""
    import torch

    from trainables.config import apply_mode, load_search_space
    from trainables.driver import calibration, packing, plan

    if not torch.cuda.is_available():  # --tiny on a CPU: nothing to cap
        return {n: None for n in names}
    card_key, _ = calibration.local_card()
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    card, calib, _ = calibration.resolve_card(card_key)
    card = calibration.Card(card.key, card.name, total_gib, card.bf16_tflops, card.bandwidth_tbs)
    trials = [plan.plan_trial(apply_mode(c, "full")[0], 100, 10, calib, card)
              for c in load_search_space(Path(args.search_space), names)]
    packing.pack(trials, total_gib)
    return {t.name: t.memory_cap_gib for t in trials}


def run_all(args, names: list[str]) -> int:
    out = Path(args.out or ROOT / "benchmarks" / f"results-{_dt.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    started = time.time()
    say(f"benchmarking {len(names)} config(s), {args.steps} optimizer steps + one generation batch each "
        f"({'tiny' if args.tiny else 'real-size'} random-weight stand-ins); generation.min_length is set to "
        f"max_length to force worst-case generation length" + ("; all at once, each capped at its planned share"
                                                                 if args.parallel else ""))
    if args.parallel:  # packed: every config's process at once, each capping its own allocator (the plan's caps)
        import threading

        caps = packed_caps(args, names)
        say("caps (GiB): " + ", ".join(f"{n} {c}" for n, c in caps.items()))
        results: dict[str, dict[str, Any]] = {}
        threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, _run_config(args, n, caps[n], quiet=True)))
                   for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = [{**results[n], "packed": True, "memory_cap_gib": caps[n]} for n in names]
        wall = time.time() - started
        out.write_text(json.dumps({"packed_wall_s": round(wall, 1), "rows": rows}, ensure_ascii=False, indent=1))
        say(f"\npacked: {len(names)} configs at once took {wall:.1f}s wall-clock")
        for r in rows:
            say(f"  [{r['name']}] {'ok' if r.get('ok') else 'FAILED'} in {r['process_wall_s']}s: peak "
                f"{r.get('peak_gpu_gib')} GiB (cap {r['memory_cap_gib']}), eval_loss {r.get('eval', {}).get('eval_loss')}, "
                f"batch {r.get('eff_train_batch_size')} x {r.get('eff_gradient_accumulation_steps')}"
                + (f"; error: {r['error']}" if r.get("error") else ""))
        return 0 if all(r.get("ok") for r in rows) else 1
    for i, name in enumerate(names, 1):
        say(f"[{i}/{len(names)}] {name} (elapsed {time.time() - started:.0f}s)")
        row = _run_config(args, name, args.memory_cap_gib)
        rows.append(row)
        out.write_text(json.dumps(rows, ensure_ascii=False, indent=1))
        say(f"  [{name}] {'ok' if row.get('ok') else 'FAILED'}: peak {row.get('peak_gpu_gib')} GiB, "
            f"train {row.get('train_tok_s')} tok/s, eval+generation {row.get('eval_gen_s')} s, "
            f"precision {row.get('eff_precision')}, 4-bit {row.get('eff_load_in_4bit')}, batch "
            f"{row.get('eff_train_batch_size')} x {row.get('eff_gradient_accumulation_steps')}"
            + (f"; error: {row['error']}" if row.get("error") else ""))
    say(f"\nwrote {out} ({time.time() - started:.0f}s in all)")
    say("generation ran with min_length = max_length (forced worst-case length); train tok/s counts label tokens; "
        "eval+gen s is the Trainer's eval_runtime for one batch of per_device_eval_batch_size dialogues\n")
    say(_table(rows))
    return 0 if all(r.get("ok") for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", metavar="NAME", help="experiment names (default: all in --search-space)")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per config (one epoch; default 6)")
    p.add_argument("--out", help="JSON results file (default benchmarks/results-<date>.json)")
    p.add_argument("--cache-dir", default=BENCH_CACHE, help="where stand-ins are built, once per architecture")
    p.add_argument("--search-space", default=str(ROOT / "search_spaces"))
    p.add_argument("--tiny", action="store_true", help="tiny stand-ins and short lengths, runs on the CPU (tests the script)")
    p.add_argument("--cpu-ok", action="store_true", help="run real-size stand-ins on the CPU too (very slow)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in each config's process")
    p.add_argument("--verbose", action="store_true", help="show each config process's whole output")
    p.add_argument("--memory-cap-gib", type=float, default=None,
                   help="cap this process's GPU memory (e.g. 22 to act like a 24 GB RTX 3090): OOM back-off then shows")
    p.add_argument("--parallel", action="store_true",
                   help="packed: run the configs' processes all at once, each capped at its planned share of the card "
                        "(trainables/driver/plan.py, packing.py); writes {packed_wall_s, rows}")
    p.add_argument("--one", metavar="NAME", help=argparse.SUPPRESS)  # internal: one config, in this process
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")

    from trainables.config import load_search_space

    if args.one:
        from trainables.process import configure_benchmark

        configure_benchmark()
        cfg = load_search_space(Path(args.search_space), [args.one])[0]
        row = bench_config(cfg, args)
        print(RESULT_PREFIX + json.dumps(row, ensure_ascii=False), flush=True)
        return 0 if row["ok"] else 1

    import torch

    if not torch.cuda.is_available() and not (args.tiny or args.cpu_ok):
        say("no CUDA GPU here: this benchmark is meant for one; add --tiny to test the script on the CPU "
            "(tiny stand-ins, short lengths), or --cpu-ok to run the real sizes on the CPU anyway (very slow)")
        return 2
    names = [c.name for c in load_search_space(Path(args.search_space), args.only)]
    return run_all(args, names)


if __name__ == "__main__":
    sys.exit(main())
