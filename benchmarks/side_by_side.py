"""The plain Hugging Face recipe against the project's trainable: same card, same workload, one after the other.

For each config (search_spaces/*.yaml, or --only NAME...), in one process:

  1. BASELINE, written the plain way (as Hugging Face's run_summarization.py and the seed's runner do, no
     project code in its training loop): AutoModelForSeq2SeqLM.from_pretrained with a BitsAndBytesConfig when the
     config asks for 4 bits, prepare_model_for_kbit_training with its defaults, peft LoRA with the config's
     rank/alpha/dropout/targets, Seq2SeqTrainer with predict_with_generate and the config's batch, accumulation,
     lengths, scheduler and beams. Scoring uses the project's ROUGE function (the same on both sides).
  2. PROJECT: trainables.trial.recipe.run_trial, the function Ray runs for each trial, with the speed-ups of
     the speed layer (trainables/trial/speed/) as they are by default.

Workload: a real-size stand-in of the config's model (random weights, the real checkpoint's dimensions and
vocabulary), synthetic Korean-like data whose dialogue and summary token lengths are drawn from a parameterized
distribution (--dialogue-tokens median,sigma,max and --summary-tokens mean,sd,min,max; printed). Random
weights don't stop at EOS, so both sides generate exactly each dev dialogue's reference-summary length
(a logits processor added to every generate() call in this process forces EOS there).

Measured per side: training label tokens/s over --steps optimizer steps after one warm-up step, the mean
per-token training loss over those steps, dev evaluation seconds (generation + ROUGE) on a subset scaled to
the full dev set, peak GPU memory, MFU (model FLOPs: 4 x base parameters x tokens in training, i.e. forward and
activation gradients of the frozen base; 2 x parameters x tokens in generation; attention's quadratic terms
left out), and the full run projected from the config's epochs, batch, accumulation and eval_steps at the
competition's size (12,457 train / 499 dev, early stopping ignored). Both sides' predictions on the rows
both generated are compared (with random weights logits are nearly tied, so this is a fraction, not a test).

    python benchmarks/side_by_side.py --out $OUT            # GPU, all seven configs
    python benchmarks/side_by_side.py --tiny --only 01_baseline_kobart_rtx3090   # CPU dry run (tests the script)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trainables import compat  # noqa: E402
from benchmarks.gpu_configs import BENCH_CACHE, dialogue_text, lexicon_text, sentence_text, tokenizer_corpus  # noqa: E402

FULL_TRAIN, FULL_DEV = 12457, 499
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, for MFU
TINY = {"encoder_max_len": 64, "decoder_max_len": 24, "dialogue": (40, 0.4, 120), "summary": (12, 3, 5, 20)}


def say(*parts: Any) -> None:
    print(*parts, flush=True)


# ---------------------------------------------------------------------------------------------------
# Data with realistic lengths


def draw_lengths(n: int, dialogue: tuple, summary: tuple, seed: int) -> list[tuple[int, int]]:
    """(dialogue tokens, summary tokens) pairs: log-normal dialogues with a long tail, normal summaries that
    grow a little with the dialogue."""
    rng = random.Random(seed)
    median, sigma, dmax = dialogue
    mean, sd, smin, smax = summary
    out = []
    for _ in range(n):
        d = int(min(dmax, max(20, rng.lognormvariate(math.log(median), sigma))))
        s = rng.gauss(mean + 0.03 * (d - median), sd)
        out.append((d, int(min(smax, max(smin, s)))))
    return out


def make_texts(tokenizer, targets: list[tuple[int, int]], seed: int) -> tuple[list[str], list[str]]:
    """Dialogues and summaries of about the target token counts for this tokenizer."""
    rng, words = random.Random(seed), lexicon_text()
    sample = [dialogue_text(rng, words, 1) for _ in range(50)]
    per_turn = sum(len(tokenizer(t)["input_ids"]) for t in sample) / len(sample)
    per_word = sum(len(tokenizer(sentence_text(rng, words, 10))["input_ids"]) for _ in range(50)) / 50 / 10
    dialogues = [dialogue_text(rng, words, max(1, round(d / per_turn))) for d, _ in targets]
    summaries = ["#Person1#는 " + sentence_text(rng, words, max(1, round((s - 4) / per_word))) for _, s in targets]
    return dialogues, summaries


def write_data(data_dir: Path, tokenizer, exp: dict, n_train: int, n_dev: int, args) -> dict[str, Any]:
    import pandas as pd

    targets = draw_lengths(n_train + n_dev, args.dialogue, args.summary, seed=0)
    dialogues, summaries = make_texts(tokenizer, targets, seed=0)
    frame = pd.DataFrame({"fname": [f"r{i}" for i in range(len(targets))], "dialogue": dialogues,
                          "summary": summaries, "topic": "일상"})
    data_dir.mkdir(parents=True, exist_ok=True)
    frame.iloc[:n_train].to_csv(data_dir / "train.csv", index=False)
    frame.iloc[n_train:].to_csv(data_dir / "dev.csv", index=False)
    tok = exp["tokenizer"]
    enc = [min(len(x), tok["encoder_max_len"]) for x in
           tokenizer([tok["input_prefix"] + d for d in dialogues], return_token_type_ids=False)["input_ids"]]
    lab = [min(len(x), tok["decoder_max_len"]) for x in tokenizer(text_target=summaries)["input_ids"]]

    def pct(v):
        s = sorted(v)
        return {q: s[min(len(s) - 1, int(q / 100 * len(s)))] for q in (5, 50, 95, 100)} | {"mean": round(sum(v) / len(v), 1)}

    return {"train_rows": n_train, "dev_rows": n_dev, "input_tokens": pct(enc), "label_tokens": pct(lab),
            "train_label_tokens_mean": sum(lab[:n_train]) / n_train}


# ---------------------------------------------------------------------------------------------------
# Instrumentation shared by both sides (not part of either training loop)


NOT_FORCED = 10**6  # the length of a generate() row whose input matched no dev dialogue: left alone


class Probe:
    """Forced generation lengths for every generate() call, and token/loss counts of every training forward."""

    def __init__(self):
        self.lengths: dict[tuple, int] = {}
        self.micro: list[tuple[float, int, int, float]] = []  # (time, encoder tokens, label tokens, mean loss)
        self.step_ends: list[tuple[float, int]] = []
        self.misses = 0  # generate() rows whose input matched no dev dialogue (not forced)
        self.frame_ids: set[int] = set()  # BOS/EOS/pad: left out of the keys, so both sides' framings match
        self.original_generate = None  # transformers' own generate(), while install() has replaced it

    def install(self):
        import torch
        from transformers import LogitsProcessor, LogitsProcessorList
        from transformers import GenerationMixin

        probe, original = self, GenerationMixin.generate

        class ForcedLengths(LogitsProcessor):
            def __init__(self, lengths, beams, eos):
                self.lengths, self.beams, self.eos = lengths, beams, eos

            def __call__(self, input_ids, scores):
                made = input_ids.shape[1] - 1  # the decoder start token is not generated
                rows = self.lengths.repeat_interleave(input_ids.shape[0] // self.lengths.shape[0]).to(scores.device)
                forced = rows < NOT_FORCED  # rows whose input matched no dev dialogue generate freely
                done = forced & (rows <= made)  # this row's length reached: only EOS; before it: anything but EOS
                scores[done] = -math.inf
                eos = torch.where(done, 0.0, -math.inf).to(scores.dtype)
                scores[forced, self.eos] = eos[forced]
                return scores

        def generate(model, *a, **kw):
            ids, mask = kw.get("input_ids"), kw.get("attention_mask")
            if ids is not None and probe.lengths:
                keys = [probe.key(r[m.bool()].tolist()) for r, m in zip(ids.cpu(), (mask if mask is not None else ids >= 0).cpu())]
                lengths = torch.tensor([probe.lengths.get(k, NOT_FORCED) for k in keys])
                probe.misses += int((lengths == NOT_FORCED).sum())
                eos = model.generation_config.eos_token_id
                eos = eos[0] if isinstance(eos, (list, tuple)) else eos
                extra = LogitsProcessorList([ForcedLengths(lengths, 1, eos)])
                if kw.get("logits_processor"):
                    extra = LogitsProcessorList([*kw["logits_processor"], *extra])
                kw["logits_processor"] = extra
            return original(model, *a, **kw)

        GenerationMixin.generate = generate
        self.original_generate = original
        return self

    def key(self, ids) -> tuple[int, ...]:
        """A dialogue's token ids without its frame: the project frames KoBART's inputs `<s> ... </s>` (its
        tokenizer adds neither), the plain recipe feeds what the tokenizer gives; both must find the same length."""
        return tuple(t for t in ids if t not in self.frame_ids)

    def uninstall(self) -> None:
        """Gives generate() back (install replaces it with the forcing one for the whole process)."""
        from transformers import GenerationMixin

        if self.original_generate is not None:
            GenerationMixin.generate, self.original_generate = self.original_generate, None

    def watch(self, model):
        """A forward hook on the transformers model: tokens and mean loss of each training micro-batch."""

        base = model.get_base_model() if hasattr(model, "get_base_model") else model

        def hook(module, args, kwargs, output):
            if not module.training:
                return
            mask = kwargs.get("attention_mask")
            n_enc = int(mask.sum()) if mask is not None else int(kwargs["input_ids"].numel())
            labels = kwargs.get("labels")
            if labels is None or getattr(output, "loss", None) is None:
                # The project computes the loss outside the model (the Trainer's compute_loss_func, which gets
                # the labels): watch_loss fills in the label tokens and the loss of this micro-batch.
                self.micro.append((time.perf_counter(), n_enc, 0, 0.0))
                return
            n_lab = int((labels != -100).sum())
            self.micro.append((time.perf_counter(), n_enc, n_lab, float(output.loss.detach().float())))

        return base.register_forward_hook(hook, with_kwargs=True)

    def watch_loss(self, loss_fn):
        """Wraps a Trainer compute_loss_func(outputs, labels, num_items_in_batch): the micro-batch's label tokens
        and its per-token mean loss go into the entry the forward hook just appended."""
        probe = self

        def wrapped(outputs, labels, num_items_in_batch=None):
            loss = loss_fn(outputs, labels, num_items_in_batch)
            n_lab = int(labels.ne(-100).sum())
            scale = float(num_items_in_batch) / max(1, n_lab) if num_items_in_batch is not None else 1.0
            if probe.micro:
                t, n_enc, _, _ = probe.micro[-1]
                probe.micro[-1] = (t, n_enc, n_lab, float(loss.detach().float()) * scale)
            return loss

        return wrapped

    def timing_callback(self):
        import torch
        from transformers import TrainerCallback

        probe = self

        class StepTimes(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                probe.step_ends.append((time.perf_counter(), len(probe.micro)))

        return StepTimes()

    def reset(self):
        self.micro.clear()
        self.step_ends.clear()


def training_numbers(probe: Probe, accumulation: int) -> dict[str, Any]:
    """Label tokens/s and per-token loss over the optimizer steps after the first."""
    ends = probe.step_ends
    if len(ends) < 2:
        return {"train_error": f"only {len(ends)} optimizer step(s) timed"}
    (t0, m0), (t1, m1) = ends[0], ends[-1]
    micro = probe.micro[m0:m1]
    labels, enc = sum(m[2] for m in micro), sum(m[1] for m in micro)
    loss = sum(m[3] * m[2] for m in micro) / max(1, labels)
    return {"train_s_measured": round(t1 - t0, 3), "train_steps_measured": len(ends) - 1,
            "train_label_tokens": labels, "train_input_tokens": enc, "train_tok_s": round(labels / (t1 - t0), 1),
            "train_s_per_step": round((t1 - t0) / (len(ends) - 1), 4), "train_loss_per_token": round(loss, 4)}


# ---------------------------------------------------------------------------------------------------
# The plain recipe


def baseline(exp: dict, model_path: str, data_dir: Path, precision: str, eval_rows: list[int], probe: Probe,
             profile_dir: Path | None) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
    from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, BitsAndBytesConfig, DataCollatorForSeq2Seq,
                              Seq2SeqTrainer, Seq2SeqTrainingArguments)

    from trainables.metrics import KoreanRouge, clean_summary

    t, tk, g, q = exp["training"], exp["tokenizer"], exp["generation"], exp["qlora"]
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.add_tokens([s for s in tk["special_tokens"] if s not in tokenizer.get_vocab()])
    kwargs: dict[str, Any] = {}
    four_bit = q["use_qlora"] and q["load_in_4bit"]
    if four_bit:
        kwargs = {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=q["bnb_4bit_quant_type"],
            bnb_4bit_use_double_quant=q["bnb_4bit_use_double_quant"],
            bnb_4bit_compute_dtype=getattr(torch, q["bnb_4bit_compute_dtype"]) if cuda else torch.float32),
            "device_map": {"": 0 if cuda else "cpu"}}
    model = AutoModelForSeq2SeqLM.from_pretrained(model_path, **kwargs)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    if four_bit:
        model = prepare_model_for_kbit_training(model)  # its defaults (gradient checkpointing on)
    if q["use_qlora"]:
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=q["lora_rank"], lora_alpha=q["lora_alpha"],
                                                 lora_dropout=q["lora_dropout"], target_modules=q["target_modules"]))
    model.generation_config.update(min_length=g["min_length"], length_penalty=g["length_penalty"],
                                   no_repeat_ngram_size=g["no_repeat_ngram_size"])

    def tokenize(frame):
        enc = tokenizer([tk["input_prefix"] + d for d in frame["dialogue"]], max_length=tk["encoder_max_len"],
                        truncation=True, return_token_type_ids=False)
        enc["labels"] = tokenizer(text_target=list(frame["summary"]), max_length=tk["decoder_max_len"], truncation=True)["input_ids"]
        return Dataset.from_dict(dict(enc))

    train_frame = pd.read_csv(data_dir / "train.csv", dtype=str)
    dev_frame = pd.read_csv(data_dir / "dev.csv", dtype=str).iloc[eval_rows].reset_index(drop=True)
    scorer = KoreanRouge(exp["metric"]["tokenization"])
    predictions: list[str] = []

    def compute_metrics(pred):
        ids = np.where(pred.predictions < 0, tokenizer.pad_token_id, pred.predictions)
        decoded = [clean_summary(x, list(tokenizer.all_special_tokens)) for x in tokenizer.batch_decode(ids, skip_special_tokens=True)]
        predictions[:] = decoded
        refs = dev_frame["summary"][: len(decoded)]  # the profile evaluates only the first batch of these rows
        return scorer.score(decoded, [clean_summary(s) for s in refs])

    args = Seq2SeqTrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="baseline-"), per_device_train_batch_size=t["per_device_train_batch_size"],
        per_device_eval_batch_size=t["per_device_eval_batch_size"], gradient_accumulation_steps=t["gradient_accumulation_steps"],
        learning_rate=t["learning_rate"], lr_scheduler_type=t["lr_scheduler_type"], warmup_steps=float(t["warmup_ratio"]),
        weight_decay=t["weight_decay"], num_train_epochs=1, bf16=cuda and precision == "bf16",
        fp16=cuda and precision == "fp16", gradient_checkpointing=t["gradient_checkpointing"],
        train_sampling_strategy="group_by_length" if t["group_by_length"] else "random",
        predict_with_generate=True, generation_max_length=g["max_length"], generation_num_beams=g["num_beams"],
        eval_strategy="no", save_strategy="no", logging_steps=1, report_to=[], seed=t["seed"], disable_tqdm=True,
        use_cpu=not cuda, dataloader_num_workers=0,
    )
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=tokenize(train_frame), eval_dataset=tokenize(dev_frame),
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
                             processing_class=tokenizer, compute_metrics=compute_metrics, callbacks=[probe.timing_callback()])
    hook = probe.watch(model)
    prof = _profiler(profile_dir, "baseline_train", steps=(2, 3)) if profile_dir else None
    if prof:
        trainer.add_callback(prof.callback)
    trainer.train()
    out = training_numbers(probe, t["gradient_accumulation_steps"])
    hook.remove()
    if cuda:
        out["peak_gpu_train_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    started = time.perf_counter()
    metrics = trainer.evaluate()
    out["eval_s_subset"] = round(time.perf_counter() - started, 3)
    out["eval_rows_measured"] = len(eval_rows)
    out["eval_score"] = metrics.get("eval_competition_score")
    if profile_dir:
        one = Dataset.from_dict(trainer.eval_dataset[: t["per_device_eval_batch_size"]])
        with _profile_block(profile_dir, "baseline_eval_batch"):
            trainer.evaluate(eval_dataset=one)
    out["predictions"] = list(predictions)
    out["attn_implementation"] = compat.attention_implementation(model.config)
    out["gradient_checkpointing"] = bool(getattr(model.get_base_model() if hasattr(model, "get_base_model") else model,
                                                 "is_gradient_checkpointing", False))
    out["optim"] = str(args.optim)
    out["params"] = _param_split(model)
    del trainer, model
    return out


# ---------------------------------------------------------------------------------------------------
# The project's trainable


def project(exp: dict, model_path: str, data_dir: Path, eval_rows: list[int], probe: Probe, arch: str, size: str,
            profile_dir: Path | None) -> dict[str, Any]:
    """The project's trial (run_trial, as Ray would run it, without Ray), watched through its extension point."""
    from benchmarks import probes
    from trainables.config import TrialConfig
    from trainables.trial.recipe import run_trial

    captured: dict[str, Any] = {}
    probes.ACTIVE.clear()
    probes.ACTIVE.update(
        probe=probe, captured=captured, model_path=model_path, param_split=_param_split,
        training_numbers=training_numbers,
        train_profiler=(lambda: _profiler(profile_dir, "project_train", steps=(2, 3)).callback) if profile_dir else None,
        eval_profiler=(lambda: _profile_block(profile_dir, "project_eval_all")) if profile_dir else None)
    reports: list[dict[str, Any]] = []
    config = TrialConfig.from_ray({"experiment": exp, "run": {
        "mode": "full", "data_dir": str(data_dir), "callbacks": [probes.TRIAL_PROBE],
        "models": {exp["model"]["checkpoint"]: {"model_path": model_path, "model_source": f"standin:{arch}-{size}"}}}})
    try:
        final = run_trial(config, lambda m, c: reports.append(m))
    finally:
        for hook in probes.ACTIVE.get("hooks", []):
            hook.remove()
    out = dict(captured.pop("train", {}))
    out.update(captured)
    out["eval_s_subset"] = out.pop("eval_s", None)
    out["eval_rows_measured"] = len(eval_rows)
    last = reports[-1] if reports else {}
    out["eval_score"] = last.get("competition_score")
    out["eff"] = {k: v for k, v in {**last, **final}.items() if k.startswith("eff_")}
    return out


# ---------------------------------------------------------------------------------------------------
# Profiles, parameters, projection


def _profiler(directory: Path, name: str, steps: tuple[int, int]):
    """A TrainerCallback profiling optimizer steps [first, last] into directory/name.txt."""
    import torch
    from transformers import TrainerCallback

    class Holder:
        pass

    holder = Holder()

    class ProfileSteps(TrainerCallback):
        prof = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == steps[0] and self.prof is None:
                self.prof = torch.profiler.profile(activities=_activities())
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if self.prof is not None and state.global_step == steps[1]:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.prof.__exit__(None, None, None)
                _write_profile(self.prof, directory / f"{name}.txt", f"{name}: optimizer steps {steps[0]}-{steps[1]}")
                self.prof = None

    holder.callback = ProfileSteps()
    return holder


def _activities():
    import torch

    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return acts


class _profile_block:
    def __init__(self, directory: Path, name: str):
        self.directory, self.name = directory, name

    def __enter__(self):
        import torch

        self.started = time.perf_counter()
        self.prof = torch.profiler.profile(activities=_activities())
        self.prof.__enter__()

    def __exit__(self, *exc):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.prof.__exit__(*exc)
        _write_profile(self.prof, self.directory / f"{self.name}.txt",
                       f"{self.name}: {time.perf_counter() - self.started:.2f} s wall (profiled)")


def _write_profile(prof, path: Path, title: str) -> None:
    import torch

    key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    events = prof.key_averages()
    lines = [title]
    if torch.cuda.is_available():
        kernels = sum(e.device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
        lines.append(f"GPU kernel time {kernels / 1e6:.3f} s; kernel launches {launches}")
    lines.append(events.table(sort_by=key, row_limit=30, max_name_column_width=60))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n\n")


def _param_split(model) -> dict[str, int]:
    """Base parameters (a 4-bit weight counts its real element count) of the encoder, decoder and output head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = {"encoder": 0, "decoder": 0, "head": 0}
    for name, p in base.named_parameters():
        if "lora_" in name or "trainable_tokens" in name:
            continue
        n = p.numel() * (2 if compat.is_4bit_param(p) else 1)  # two 4-bit values per stored byte
        key = "encoder" if ".encoder." in f".{name}" or name.startswith("encoder") else \
              "decoder" if "decoder" in name else "head" if "lm_head" in name else None
        if key and "embed" not in name and "shared" not in name and "position" not in name:
            out[key] += n
    return out


def mfu(row: dict[str, Any], gen_tokens: int, enc_tokens_eval: int, beams: int, peak: float | None) -> None:
    p = row.get("params") or {}
    if not peak or not p:
        return
    if row.get("train_tok_s"):
        flops = 4 * (p["encoder"] * row["train_input_tokens"] + (p["decoder"] + p["head"]) * row["train_label_tokens"])
        row["train_mfu"] = round(flops / row["train_s_measured"] / (peak * 1e12), 4)
    if row.get("eval_s_subset"):
        flops = 2 * (p["encoder"] * enc_tokens_eval + (p["decoder"] + p["head"]) * gen_tokens * beams)
        row["eval_mfu"] = round(flops / row["eval_s_subset"] / (peak * 1e12), 5)


def project_full_run(exp: dict, batch: int, accumulation: int, tok_s: float | None, eval_s_full: float | None,
                     label_tokens_mean: float) -> dict[str, Any]:
    """Optimizer steps and evaluations the config implies at 12,457 training rows, and the wall-clock they take."""
    t = exp["training"]
    per_epoch = math.ceil(FULL_TRAIN / batch) // accumulation or 1
    total = per_epoch * t["num_train_epochs"]
    points = {per_epoch * (e + 1) for e in range(t["num_train_epochs"])}
    if t["eval_steps"]:
        points |= set(range(t["eval_steps"], total + 1, t["eval_steps"]))
    train_s = FULL_TRAIN * t["num_train_epochs"] * label_tokens_mean / tok_s if tok_s else None
    evals_s = len(points) * eval_s_full if eval_s_full else None
    return {"steps": total, "evaluations": len(points), "train_h": train_s and round(train_s / 3600, 3),
            "eval_h": evals_s and round(evals_s / 3600, 3),
            "total_h": round((train_s + evals_s) / 3600, 3) if train_s and evals_s else None}


# ---------------------------------------------------------------------------------------------------
# One config, both sides


def bench_config(cfg, args, probe: Probe) -> dict[str, Any]:
    import torch

    from trainables.config import ExperimentConfig, apply_mode
    from trainables.trial.families.common import load_tokenizer
    from trainables.trial.families.seq2seq.standin import build_standin
    from trainables.trial.models import Environment, decide_settings

    size = "tiny" if args.tiny else "real"
    exp = apply_mode(cfg, "full")[0].model_dump()  # the plain recipe reads the YAML's values as a user's script would
    t, tk, g = exp["training"], exp["tokenizer"], exp["generation"]
    t.update(num_train_epochs=1, eval_steps=None, early_stopping_patience=None, logging_steps=1)
    if args.tiny:
        tk["encoder_max_len"] = min(tk["encoder_max_len"], TINY["encoder_max_len"])
        tk["decoder_max_len"] = min(tk["decoder_max_len"], TINY["decoder_max_len"])
        g["max_length"] = min(g["max_length"], tk["decoder_max_len"])
        g["min_length"] = min(g["min_length"], 2)
    if args.plain_project:
        exp["speed"] = {**exp["speed"], "enabled": False}
    arch = exp["model"]["architecture"]
    cuda = torch.cuda.is_available()
    model_path = str(build_standin(arch, tokenizer_corpus(), Path(args.cache_dir), size=size, warm_start=False))
    tokenizer = load_tokenizer(model_path, tk["special_tokens"])
    n_train = t["per_device_train_batch_size"] * t["gradient_accumulation_steps"] * (args.steps + 1)
    data_dir = Path(tempfile.mkdtemp(prefix=f"sbs-{exp['name']}-"))
    data = write_data(data_dir, tokenizer, exp, n_train, args.dev_rows, args)
    # forced generation lengths: each dev dialogue's reference-summary length, capped below max_length
    import pandas as pd

    dev = pd.read_csv(data_dir / "dev.csv", dtype=str)
    enc = tokenizer([tk["input_prefix"] + d for d in dev["dialogue"]], max_length=tk["encoder_max_len"], truncation=True,
                    return_token_type_ids=False)["input_ids"]
    lab = tokenizer(text_target=list(dev["summary"]), max_length=tk["decoder_max_len"], truncation=True)["input_ids"]
    gen_len = [max(g["min_length"], min(len(x), g["max_length"] - 1)) for x in lab]
    probe.frame_ids = {i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
    probe.lengths = {probe.key(e): n for e, n in zip(enc, gen_len)}
    rng = random.Random(1)
    base_n = min(args.dev_rows, t["per_device_eval_batch_size"] * args.baseline_eval_batches)
    base_rows = sorted(rng.sample(range(args.dev_rows), base_n))
    settings = decide_settings(ExperimentConfig.model_validate(exp), Environment.probe(), "standin")
    say(f"  [{exp['name']}] {arch}-{size}; train {n_train} rows, dev {args.dev_rows} (baseline evaluates {base_n}); "
        f"input tokens {data['input_tokens']}, label tokens {data['label_tokens']}")
    peak = next((v for k, v in PEAK_TFLOPS.items() if cuda and k in torch.cuda.get_device_name(0)), None)
    rows: dict[str, Any] = {"name": exp["name"], "card": torch.cuda.get_device_name(0) if cuda else "cpu", "data": data,
                            "settings": {"batch": t["per_device_train_batch_size"], "accumulation": t["gradient_accumulation_steps"],
                                         "eval_batch": t["per_device_eval_batch_size"], "enc": tk["encoder_max_len"],
                                         "dec": tk["decoder_max_len"], "beams": g["num_beams"], "max_length": g["max_length"],
                                         "precision": settings.precision, "four_bit": settings.load_in_4bit,
                                         "lora_rank": exp["qlora"]["lora_rank"]}}
    profile_dir = Path(args.out) / "profiles" if args.profile and exp["name"] in args.profile else None
    for side in ("baseline", "project"):
        probe.reset()
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        probe.misses = 0
        try:
            if side == "baseline":
                from trainables.trial.speed import sdpa_without_cudnn  # the project's one switch, to show its share

                with sdpa_without_cudnn(args.baseline_no_cudnn):
                    r = baseline(exp, model_path, data_dir, settings.precision, base_rows, probe, profile_dir)
                r["sdpa"] = "no cuDNN (--baseline-no-cudnn)" if args.baseline_no_cudnn else "torch default"
            else:
                r = project(exp, model_path, data_dir, list(range(args.dev_rows)), probe, arch, size, profile_dir)
        except Exception as err:  # noqa: BLE001 - a failed side is a result too
            r = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            traceback.print_exc()
        finally:
            if cuda:
                torch.cuda.set_per_process_memory_fraction(1.0, 0)  # undo the project's cap for the next run
        r["wall_s"] = round(time.perf_counter() - started, 1)
        r["unforced_generation_rows"] = probe.misses  # rows generated without a forced length: should be 0
        if cuda:
            r["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        eval_idx = base_rows if side == "baseline" else list(range(args.dev_rows))
        r["eval_s_full"] = r.get("eval_s_subset") and round(r["eval_s_subset"] * FULL_DEV / len(eval_idx), 2)
        mfu(r, sum(gen_len[i] for i in eval_idx), sum(len(enc[i]) for i in eval_idx), g["num_beams"], peak)
        eff = r.get("eff", {})
        batch = eff.get("eff_train_batch_size", t["per_device_train_batch_size"])
        accum = eff.get("eff_gradient_accumulation_steps", t["gradient_accumulation_steps"])
        full_exp = apply_mode(cfg, "full")[0].model_dump()
        r["projection"] = project_full_run(full_exp, batch, accum, r.get("train_tok_s"), r.get("eval_s_full"),
                                           data["train_label_tokens_mean"])
        rows[side] = r
        say(f"  [{exp['name']}] {side}: train {r.get('train_tok_s')} label tok/s (loss/token {r.get('train_loss_per_token')}), "
            f"eval {r.get('eval_s_subset')} s for {len(eval_idx)} rows -> {r.get('eval_s_full')} s for {FULL_DEV}, "
            f"peak {r.get('peak_gpu_gib')} GiB, projected {r['projection'].get('total_h')} h"
            + (f"; ERROR {r['error']}" if r.get("error") else ""))
    b, p = rows["baseline"], rows["project"]
    if b.get("predictions") and p.get("predictions"):
        same = sum(b["predictions"][j] == p["predictions"][i] for j, i in enumerate(base_rows))
        rows["same_predictions"] = f"{same}/{len(base_rows)}"
    for key in ("train_tok_s", "eval_s_full"):
        if b.get(key) and p.get(key):
            rows[f"ratio_{key}"] = round(p[key] / b[key], 2) if key == "train_tok_s" else round(b[key] / p[key], 2)
    if b["projection"].get("total_h") and p["projection"].get("total_h"):
        rows["ratio_total"] = round(b["projection"]["total_h"] / p["projection"]["total_h"], 2)
    for side in ("baseline", "project"):
        rows[side].pop("predictions", None)
    return rows


def table(results: list[dict[str, Any]]) -> str:
    head = ("| config | card | train label tok/s base / proj (x) | loss/token base / proj | dev eval s (499) base / proj (x) "
            "| same preds | peak GiB base / proj | MFU train base / proj | projected h base / proj (x) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    tb = tp = 0.0
    for r in results:
        b, p = r.get("baseline", {}), r.get("project", {})
        pb, pp = b.get("projection", {}), p.get("projection", {})
        tb += pb.get("total_h") or 0
        tp += pp.get("total_h") or 0

        def f(x, fmt="{:.0f}"):
            return "-" if x is None else fmt.format(x)

        lines.append(
            f"| {r['name']} | {r.get('card')} | {f(b.get('train_tok_s'))} / {f(p.get('train_tok_s'))} ({f(r.get('ratio_train_tok_s'), '{:.2f}')}) "
            f"| {f(b.get('train_loss_per_token'), '{:.3f}')} / {f(p.get('train_loss_per_token'), '{:.3f}')} "
            f"| {f(b.get('eval_s_full'), '{:.1f}')} / {f(p.get('eval_s_full'), '{:.1f}')} ({f(r.get('ratio_eval_s_full'), '{:.2f}')}) "
            f"| {r.get('same_predictions', '-')} | {f(b.get('peak_gpu_gib'), '{:.1f}')} / {f(p.get('peak_gpu_gib'), '{:.1f}')} "
            f"| {f(b.get('train_mfu'), '{:.3f}')} / {f(p.get('train_mfu'), '{:.3f}')} "
            f"| {f(pb.get('total_h'), '{:.2f}')} / {f(pp.get('total_h'), '{:.2f}')} ({f(r.get('ratio_total'), '{:.2f}')}) |")
    if tp:
        lines.append(f"| **grid total** | | | | | | | | **{tb:.2f} / {tp:.2f} ({tb / tp:.2f}x)** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", metavar="NAME")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps after one warm-up step (default 3)")
    p.add_argument("--dev-rows", type=int, default=FULL_DEV, help=f"dev dialogues the project evaluates (default {FULL_DEV}); "
                   "fewer are measured and scaled to 499")
    p.add_argument("--baseline-eval-batches", type=int, default=3,
                   help="evaluation batches the baseline generates (random dev rows, file order), scaled to 499")
    p.add_argument("--dialogue", type=lambda s: tuple(float(x) for x in s.split(",")), default=(280, 0.45, 1200),
                   help="dialogue tokens: log-normal median,sigma,max (default 280,0.45,1200)")
    p.add_argument("--summary", type=lambda s: tuple(float(x) for x in s.split(",")), default=(58, 12, 30, 110),
                   help="summary tokens: normal mean,sd,min,max (default 58,12,30,110)")
    p.add_argument("--profile", nargs="*", default=[], metavar="NAME", help="torch-profile these configs' steps and evaluations")
    p.add_argument("--plain-project", action="store_true", help="run the project side with `speed: off` too")
    p.add_argument("--baseline-no-cudnn", action="store_true",
                   help="run the plain recipe with SDPA's cuDNN backend off (the project's no_cudnn_attention), for comparison")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "side_by_side_out"))
    p.add_argument("--cache-dir", default=BENCH_CACHE)
    p.add_argument("--search-space", default=str(ROOT / "search_spaces"))
    p.add_argument("--tiny", action="store_true", help="tiny stand-ins and lengths on the CPU: tests the script")
    args = p.parse_args(argv)
    from trainables.process import SMOKE_WORKER_ENV, configure_benchmark

    configure_benchmark(env=SMOKE_WORKER_ENV)  # stand-ins only: never wait on a hub
    import torch

    if args.tiny:
        args.dialogue, args.summary = TINY["dialogue"], TINY["summary"]
        args.dev_rows = min(args.dev_rows, 12)
    elif not torch.cuda.is_available():
        say("no CUDA GPU: add --tiny for the CPU dry run")
        return 2
    from trainables.config import load_search_space

    configs = load_search_space(Path(args.search_space), args.only)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    say(f"side by side: {len(configs)} config(s); dialogue tokens log-normal(median, sigma, max) = {args.dialogue}; "
        f"summary tokens normal(mean, sd, min, max) = {args.summary}; generation forced to each dev row's summary length")
    probe = Probe().install()
    results = []
    try:
        for cfg in configs:
            results.append(bench_config(cfg, args, probe))
            (out / "side_by_side.json").write_text(json.dumps(results, ensure_ascii=False, indent=1))
    finally:  # a caller in the same process (a test) gets the ordinary generate() back
        probe.uninstall()
    say("\n" + table(results))
    return 0 if all("error" not in r.get(s, {}) for r in results for s in ("baseline", "project")) else 1


if __name__ == "__main__":
    sys.exit(main())
