"""The plain QLoRA recipe against the project (with Unsloth where it runs) for the decoder-only configs.

For each config in search_spaces/llm/ (or --only NAME...), in one process on one card:

  1. PLAIN, as a user writes it: AutoModelForCausalLM.from_pretrained with a BitsAndBytesConfig (NF4, double
     quantization, bf16 compute) where the config asks for 4 bits, prepare_model_for_kbit_training, peft LoRA
     (CAUSAL_LM) with the config's rank/alpha/dropout/targets, transformers' Trainer with the config's micro-batch,
     accumulation, learning rate and scheduler; the dev set generated with model.generate() in left-padded batches
     of the config's evaluation batch at the config's beams, and scored with the project's ROUGE.
  2. PROJECT: trainables.trial.recipe.run_trial (what Ray runs per trial) on the same config, as it is: Unsloth's
     FastLanguageModel where the trial may use it (qlora.use_unsloth, a CUDA GPU, unsloth installed; the reason
     is recorded otherwise), the speed layer's evaluation.

Workload, equal on both sides: a real-size stand-in of the config's model (random weights, the real checkpoint's
shape and vocabulary: families/causal_lm/standin.py), training rows that are all the same prompt of --prompt-tokens
tokens and summary of --summary-tokens tokens (+ the EOS), so every micro-batch holds the same label tokens whatever
the sampler does, and both sides' first loss is the loss of the same batch at the same (LoRA-initialised) weights;
dev rows of the same prompt length; generation forced to exactly --new-tokens new tokens on every row (random
weights never stop at EOS by themselves), both sides.

Measured per side: label tokens/s over the optimizer steps after the first (--steps timed), the first step's mean
per-token loss, the peak GPU memory of training (torch's max allocated, reset before each side), and the dev
evaluation's seconds (generation and ROUGE; the project's also computes the dev loss) scaled to 499 dialogues.

    python benchmarks/llm_side_by_side.py --out $OUT                   # GPU, every config in search_spaces/llm
    python benchmarks/llm_side_by_side.py --tiny --only 01_qwen2.5_1.5b_instruct_lora   # CPU dry run
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_configs import BENCH_CACHE, dialogue_text, lexicon_text, tokenizer_corpus  # noqa: E402

FULL_DEV = 499
TINY = {"prompt_tokens": 192, "summary_tokens": 12, "new_tokens": 6, "dev_rows": 6}


def say(*parts: Any) -> None:
    print(*parts, flush=True)


@contextlib.contextmanager
def fixed_new_tokens(n: int):
    """Every generate() in this process makes exactly `n` new tokens (random weights would stop anywhere)."""
    from transformers import GenerationMixin

    original = GenerationMixin.generate

    def generate(model, *args, **kwargs):
        kwargs.pop("max_length", None)
        kwargs.update(max_new_tokens=n, min_new_tokens=n)
        return original(model, *args, **kwargs)

    GenerationMixin.generate = generate
    try:
        yield
    finally:
        GenerationMixin.generate = original


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------
# The workload


def bench_experiment(cfg, args):
    """The config as both sides run it: one epoch over --steps + 1 optimizer steps, evaluated once at its end, at
    the benchmark's lengths; everything else as the YAML says."""
    from trainables.config import apply_mode

    exp = apply_mode(cfg, "full")[0].model_copy(deep=True)
    t, tok = exp.training, exp.tokenizer
    t.num_train_epochs, t.eval_steps, t.early_stopping_patience, t.logging_steps = 1, None, None, 1
    tok.encoder_max_len, tok.decoder_max_len = args.prompt_tokens, args.summary_tokens + 1
    exp.generation.max_length = min(exp.generation.max_length, args.new_tokens)
    exp.generation.min_length = min(exp.generation.min_length, args.new_tokens)
    return exp


def write_data(data_dir: Path, exp, n_train: int, n_dev: int) -> None:
    """Rows whose prompt and summary are longer than the benchmark's lengths, so that every prompt is cut to
    exactly --prompt-tokens and every summary to --summary-tokens: all train rows alike, dev rows alike."""
    import random

    import pandas as pd

    rng, words = random.Random(0), lexicon_text()
    dialogue = dialogue_text(rng, words, max(4, exp.tokenizer.encoder_max_len // 6))
    summary = "#Person1#는 " + " ".join(rng.choice(words) for _ in range(exp.tokenizer.decoder_max_len * 2))
    frame = pd.DataFrame({"fname": [f"r{i}" for i in range(n_train + n_dev)], "dialogue": dialogue,
                          "summary": summary, "topic": "일상"})
    data_dir.mkdir(parents=True, exist_ok=True)
    frame.iloc[:n_train].to_csv(data_dir / "train.csv", index=False)
    frame.iloc[n_train:].to_csv(data_dir / "dev.csv", index=False)


def label_tokens(dataset) -> int:
    return sum(sum(1 for x in row if x != -100) for row in dataset["labels"])


# ---------------------------------------------------------------------------------------------------
# The plain recipe


class StepClock:
    """Wall-clock at every optimizer step's end and the logged losses: a TrainerCallback for the plain side."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def __init__(self):
                self.ends: list[float] = []
                self.losses: list[float] = []

            def on_step_end(self, args, state, control, **kwargs):
                _sync()
                self.ends.append(time.perf_counter())

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    self.losses.append(float(logs["loss"]))

        return Clock()


def plain_model(exp, model_path: str, tokenizer):
    """The model as the plain recipe loads it: bf16 base (4-bit NF4 where asked), prepared for k-bit training,
    vocabulary resized for the added tokens, peft LoRA on the config's targets."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from trainables.trial.families.common import grow_vocabulary

    q, cuda = exp.qlora, torch.cuda.is_available()
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if cuda else torch.float32}
    if q.load_in_4bit:
        kwargs.update(device_map={"": 0 if cuda else "cpu"}, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=q.bnb_4bit_quant_type, bnb_4bit_use_double_quant=q.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32))
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if not q.load_in_4bit and cuda:
        model = model.cuda()
    grow_vocabulary(model, tokenizer, exp.training.seed)  # the added tokens' rows as the trial draws them: equal weights
    gc_on = exp.training.gradient_checkpointing
    if q.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc_on)
    elif gc_on:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=q.lora_rank, lora_alpha=q.lora_alpha,
                                            lora_dropout=q.lora_dropout, target_modules=q.target_modules))


def plain_train(exp, model, tokenizer, train) -> dict[str, Any]:
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    t, cuda = exp.training, torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="plain-llm-"), per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type, warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay,
        num_train_epochs=1, bf16=cuda, logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[],
        seed=t.seed, disable_tqdm=True, use_cpu=not cuda, dataloader_num_workers=0)
    clock = StepClock()
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[clock],
                      data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    out = rates(clock.ends, label_tokens(train) / max(1, len(clock.ends)))
    out["first_loss_per_token"] = clock.losses[0] if clock.losses else None
    if cuda:
        out["peak_train_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def rates(ends: list[float], labels_per_step: float) -> dict[str, Any]:
    """Label tokens/s over the optimizer steps after the first (its time includes compilation and warm-up)."""
    if len(ends) < 2:
        return {"train_error": f"only {len(ends)} optimizer step(s) timed"}
    per_step = (ends[-1] - ends[0]) / (len(ends) - 1)
    return {"train_s_per_step": round(per_step, 4), "train_steps_timed": len(ends) - 1,
            "train_label_tokens_per_step": labels_per_step, "train_tok_s": round(labels_per_step / per_step, 1)}


def plain_evaluate(exp, model, tokenizer, framing, dev, references: list[str]) -> dict[str, Any]:
    """model.generate() in left-padded batches of the config's evaluation batch, at its beams; ROUGE scored."""
    import torch

    from trainables.metrics import KoreanRouge

    model.eval()
    prompts = [ids[: next(i for i, x in enumerate(lab) if x != -100)] for ids, lab in zip(dev["input_ids"], dev["labels"])]
    batch, pad = exp.training.per_device_eval_batch_size, framing.pad_id
    device = next(model.parameters()).device
    started, texts = time.perf_counter(), []
    for s in range(0, len(prompts), batch):
        rows = prompts[s:s + batch]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = (torch.arange(width, device=device)[None, :] >= torch.tensor([width - len(r) for r in rows], device=device)[:, None]).long()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, num_beams=exp.generation.num_beams, pad_token_id=pad)
        texts += framing.decode(tokenizer, out[:, width:].tolist())
    KoreanRouge(exp.metric.tokenization).score(texts, references)
    return {"eval_s_subset": round(time.perf_counter() - started, 3), "eval_rows": len(prompts)}


def plain_side(exp, model_path: str, data_dir: Path) -> dict[str, Any]:
    import pandas as pd

    from trainables.trial.families import family_of

    family = family_of(exp.model.architecture)
    tokenizer = family.load_tokenizer(model_path, exp)  # the same tokenizer, pad token and added tokens as the trial
    framing = family.framing(tokenizer, model_path, exp)  # the same prompts and labels: equal data on both sides
    train, dev = (family.tokenize(pd.read_csv(data_dir / f"{s}.csv", dtype=str), tokenizer, exp, framing)
                  for s in ("train", "dev"))
    model = plain_model(exp, model_path, tokenizer)
    framing.apply_to(model)
    out = plain_train(exp, model, tokenizer, train)
    out.update(plain_evaluate(exp, model, tokenizer, framing, dev, list(pd.read_csv(data_dir / "dev.csv")["summary"])))
    del model
    return out


# ---------------------------------------------------------------------------------------------------
# The project


def project_side(exp, model_path: str, data_dir: Path, arch: str, size: str) -> dict[str, Any]:
    """run_trial as Ray runs it (without Ray), timed through the trial's extension point."""
    import torch

    from benchmarks.probes import BENCH_TIMING, LOSSES, STEP_LOSSES, TIMING
    from trainables.config import TrialConfig
    from trainables.trial.recipe import run_trial

    reports: list[dict[str, Any]] = []
    config = TrialConfig.from_ray({"experiment": exp.model_dump(), "run": {
        "mode": "full", "data_dir": str(data_dir), "callbacks": [BENCH_TIMING, STEP_LOSSES],
        "models": {exp.model.checkpoint: {"model_path": model_path, "model_source": f"standin:{arch}-{size} random weights"}}}})
    final = run_trial(config, lambda metrics, checkpoint: reports.append(metrics))
    t = exp.training
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * args_summary_tokens(exp)
    out = rates(TIMING.get("step_ends", []), per_step)
    out["first_loss_per_token"] = LOSSES[0] if LOSSES else None
    out["eval_s_subset"] = TIMING.get("eval_runtime")
    if torch.cuda.is_available():
        out["peak_train_gib"] = round(TIMING.get("peak_train", 0) / 2**30, 2)
    last = {**(reports[-1] if reports else {}), **final}
    out["eff"] = {k: v for k, v in last.items() if k.startswith("eff_") and k in EFF_KEPT}
    out["micro_batch"] = f"{last.get('eff_train_batch_size', t.per_device_train_batch_size)}x" \
                         f"{last.get('eff_gradient_accumulation_steps', t.gradient_accumulation_steps)}"
    return out


EFF_KEPT = ("eff_unsloth", "eff_unsloth_reason", "eff_load_in_4bit", "eff_precision", "eff_family", "eff_notes",
            "eff_speed_eval_merged", "eff_speed_eval_batch_rows", "eff_train_batch_size",
            "eff_gradient_accumulation_steps", "eff_token_rows")


def args_summary_tokens(exp) -> int:
    """Label tokens of one training row: the summary cut to fit, and its EOS (decoder_max_len, all rows alike)."""
    return exp.tokenizer.decoder_max_len


# ---------------------------------------------------------------------------------------------------
# One config, both sides


def bench_config(cfg, args) -> dict[str, Any]:
    import torch

    from trainables.trial.families import family_of

    exp = bench_experiment(cfg, args)
    arch, size = exp.model.architecture, "tiny" if args.tiny else "real"
    family = family_of(arch)
    started = time.perf_counter()
    model_path = str(family.build_standin(arch, tokenizer_corpus(), Path(args.cache_dir), size=size, warm_start=False))
    say(f"  [{exp.name}] stand-in {arch}-{size} in {time.perf_counter() - started:.0f} s: {model_path}")
    t = exp.training
    n_train = t.per_device_train_batch_size * t.gradient_accumulation_steps * (args.steps + 1)
    data_dir = Path(tempfile.mkdtemp(prefix=f"llm-sbs-{exp.name}-"))
    write_data(data_dir, exp, n_train, args.dev_rows)
    row: dict[str, Any] = {"name": exp.name, "card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                           "workload": {"train_rows": n_train, "dev_rows": args.dev_rows, "prompt_tokens": args.prompt_tokens,
                                        "summary_tokens": args.summary_tokens, "new_tokens": args.new_tokens,
                                        "batch": f"{t.per_device_train_batch_size}x{t.gradient_accumulation_steps}",
                                        "eval_batch": t.per_device_eval_batch_size, "beams": exp.generation.num_beams,
                                        "four_bit": exp.qlora.load_in_4bit, "lora_rank": exp.qlora.lora_rank}}
    for side in ("plain", "project"):
        row[side] = run_side(side, cfg, model_path, data_dir, arch, size, args)
    p, q = row["plain"], row["project"]
    if p.get("train_tok_s") and q.get("train_tok_s"):
        row["ratio_train"] = round(q["train_tok_s"] / p["train_tok_s"], 2)
    if p.get("peak_train_gib") and q.get("peak_train_gib"):
        row["ratio_peak"] = round(q["peak_train_gib"] / p["peak_train_gib"], 3)
    if p.get("eval_s_full") and q.get("eval_s_full"):
        row["ratio_eval"] = round(p["eval_s_full"] / q["eval_s_full"], 2)
    if p.get("first_loss_per_token") is not None and q.get("first_loss_per_token") is not None:
        row["first_loss_diff"] = round(abs(p["first_loss_per_token"] - q["first_loss_per_token"]), 5)
    return row


def run_side(side: str, cfg, model_path: str, data_dir: Path, arch: str, size: str, args) -> dict[str, Any]:
    """One side in a process of its own: Unsloth patches transformers when it is imported, so the plain recipe must
    never share a process with it; the project's side imports it first, as a trial's process does."""
    import subprocess

    result = Path(tempfile.mkdtemp(prefix="llm-sbs-side-")) / "side.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--only", cfg.name, "--model-path", model_path,
           "--data-dir", str(data_dir), "--side-out", str(result), "--search-space", args.search_space,
           "--steps", str(args.steps), "--prompt-tokens", str(args.prompt_tokens), "--summary-tokens",
           str(args.summary_tokens), "--new-tokens", str(args.new_tokens), "--dev-rows", str(args.dev_rows),
           *(["--tiny"] if args.tiny else [])]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, timeout=args.side_timeout)
    r = json.loads(result.read_text()) if result.is_file() else {"error": f"the {side} process exited {done.returncode}"}
    r["process_s"] = round(time.perf_counter() - started, 1)
    say(f"  [{cfg.name}] {side}: {r.get('train_tok_s')} label tok/s, first loss {r.get('first_loss_per_token')}, "
        f"train peak {r.get('peak_train_gib')} GiB, eval {r.get('eval_s_full')} s for {FULL_DEV}"
        + (f", unsloth {r['eff'].get('eff_unsloth')} ({r['eff'].get('eff_unsloth_reason')})" if r.get("eff") else "")
        + (f"; ERROR {r['error']}" if r.get("error") else ""))
    return r


def one_side(args) -> int:
    """The --side process: measure one side of one config and write its JSON to --side-out."""
    from trainables.config import load_search_space

    cfg = load_search_space(Path(args.search_space), args.only)[0]
    exp = bench_experiment(cfg, args)
    if args.side == "project":  # as the trial's entry point does: Unsloth (where it will run) before transformers
        from trainables.trial import unsloth
        from trainables.trial.families import family_of

        unsloth.import_before_transformers(exp, family_of(exp.model.architecture).name)
    from trainables.process import configure_benchmark

    configure_benchmark()
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started, data_dir = time.perf_counter(), Path(args.data_dir)
    try:
        with fixed_new_tokens(args.new_tokens):
            r = (plain_side(exp, args.model_path, data_dir) if args.side == "plain" else
                 project_side(exp, args.model_path, data_dir, exp.model.architecture, "tiny" if args.tiny else "real"))
    except Exception as err:  # noqa: BLE001 - a failed side is a result too
        traceback.print_exc()
        r = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
    r["wall_s"] = round(time.perf_counter() - started, 1)
    if torch.cuda.is_available():
        r["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if r.get("eval_s_subset"):
        r["eval_s_full"] = round(r["eval_s_subset"] * FULL_DEV / args.dev_rows, 1)
    Path(args.side_out).write_text(json.dumps(r, ensure_ascii=False, indent=1))
    return 0 if "error" not in r else 1


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| config | card | batch | label tok/s plain / project (x) | train peak GiB plain / project (x) "
            "| first loss plain / project | dev eval s (499) plain / project (x) | unsloth |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def f(x, fmt="{:.0f}"):
        return "-" if x is None else fmt.format(x)

    for r in rows:
        p, q = r.get("plain", {}), r.get("project", {})
        lines.append(
            f"| {r['name']} | {r.get('card')} | {q.get('micro_batch', r['workload']['batch'])} "
            f"| {f(p.get('train_tok_s'))} / {f(q.get('train_tok_s'))} ({f(r.get('ratio_train'), '{:.2f}')}) "
            f"| {f(p.get('peak_train_gib'), '{:.1f}')} / {f(q.get('peak_train_gib'), '{:.1f}')} ({f(r.get('ratio_peak'), '{:.2f}')}) "
            f"| {f(p.get('first_loss_per_token'), '{:.4f}')} / {f(q.get('first_loss_per_token'), '{:.4f}')} "
            f"| {f(p.get('eval_s_full'), '{:.1f}')} / {f(q.get('eval_s_full'), '{:.1f}')} ({f(r.get('ratio_eval'), '{:.2f}')}) "
            f"| {q.get('eff', {}).get('eff_unsloth', '-')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", metavar="NAME")
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps after the first (default 4)")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--summary-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64, help="tokens every dev row generates (default 64)")
    p.add_argument("--dev-rows", type=int, default=64, help="dev dialogues generated, scaled to 499 (default 64)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "llm_side_by_side_out"))
    p.add_argument("--cache-dir", default=BENCH_CACHE)
    p.add_argument("--search-space", default=str(ROOT / "search_spaces" / "llm"))
    p.add_argument("--tiny", action="store_true", help="tiny stand-ins and lengths on the CPU: tests the script")
    p.add_argument("--side-timeout", type=int, default=1800, help="seconds one side's process may take")
    for name in ("--side", "--model-path", "--data-dir", "--side-out"):  # the per-side processes' own arguments
        p.add_argument(name, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
        args.steps = min(args.steps, 2)
    if args.side:
        return one_side(args)
    from trainables.process import configure_benchmark

    configure_benchmark()
    import torch

    if not args.tiny and not torch.cuda.is_available():
        say("no CUDA GPU: add --tiny for the CPU dry run")
        return 2
    from trainables.config import load_search_space

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for cfg in load_search_space(Path(args.search_space), args.only):
        rows.append(bench_config(cfg, args))
        (out / "llm_side_by_side.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1))
    say("\n" + table(rows))
    return 0 if all("error" not in r[s] for r in rows for s in ("plain", "project")) else 1


if __name__ == "__main__":
    sys.exit(main())
