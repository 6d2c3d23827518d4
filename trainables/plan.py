"""The pre-flight plan: each trial's GPU memory and time before it starts, and which trials share a GPU.

Nothing here allocates a model or needs a GPU. A model's size comes from its config (the checkpoint's
config.json when it is on disk or in the Hugging Face cache, else the known dimensions in
`models.REAL_DIMS`); from the size and the experiment's settings (batch, lengths, beams, LoRA targets,
4-bit, gradient checkpointing) the plan computes *workload features*: bytes that are fixed (weights, LoRA
parameters with their gradients and Adam state), activation bytes of one training micro-batch, bytes of one
generation batch (KV caches, beams' logits), and the work of a step (module calls, FLOPs, generated tokens).
A per-card calibration table (`trainables/calibration/<card>.json`, fitted from real-size runs on that card
by `plan --calibrate` or from `benchmarks/gpu_configs.py` results) turns features into GiB and seconds:
each prediction is a sum of features times a few fitted coefficients, so the same seven numbers per card
serve every config. Cards without their own table borrow the H100's, with the time terms scaled by the
datasheet ratios (FLOP-bound terms by dense bf16 throughput, bandwidth-bound terms by memory bandwidth;
per-call overheads unchanged), which the plan prints.

Packing: where several trials fit one GPU with headroom, each asks Ray for a fraction of a GPU
(`gpu_fraction`) and caps its own allocator at its share (`apply_memory_cap`, through
`torch.cuda.set_per_process_memory_fraction`), so one trial can't starve another; past the cap a trial gets
the ordinary CUDA OOM, and its larger-micro-batch back-off steps down to the configured batch as on a small card.
Out of memory at the configured batch, the trial overran its share: it raises PackedTrialOverrun, and the driver
(trainables.overrun) has Ray retry it on a whole GPU from its last checkpoint; the retry reads the fraction Ray
gave it (`granted_gpu_fraction`) and runs uncapped. Longest trials go first.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from trainables.config import ConfigError, ExperimentConfig, Placement
from trainables.errors import UserError

GIB = 2**30
CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"
CONTEXT_GIB = 0.6  # a CUDA context and cuBLAS workspace per process, outside the allocator's cap
HEADROOM = 1.15  # a packed trial's share is its predicted peak (reserved) plus 15%
MIN_PACK_FRACTION_STEP = 0.01
# Allocated memory needs some slack for fragmentation: reserved/allocated ranged 1.12-1.38 on the H100 runs.
FRAGMENTATION = 1.10
# Each other trial on the same GPU slows a trial by this much: four real-size configs packed on one H100 ran
# their steps 1.2-2.2x and their generation 1.7-2.5x slower than alone (BENCHMARKS.md), ~0.35 per co-runner.
PACKED_SLOWDOWN = 0.35


@dataclass(frozen=True)
class Card:
    key: str
    name: str
    memory_gib: float  # what torch reports as total memory
    bf16_tflops: float  # dense, datasheet
    bandwidth_tbs: float  # datasheet


CARDS = {
    "rtx3090": Card("rtx3090", "NVIDIA GeForce RTX 3090", 23.7, 71.0, 0.936),
    "a100-40": Card("a100-40", "NVIDIA A100-SXM4-40GB", 39.4, 312.0, 1.555),
    "a100-80": Card("a100-80", "NVIDIA A100-SXM4-80GB", 79.2, 312.0, 2.039),
    "h100": Card("h100", "NVIDIA H100 80GB HBM3", 79.2, 989.0, 3.35),
    "h200": Card("h200", "NVIDIA H200", 139.8, 989.0, 4.8),
}


class PlanError(ConfigError):
    """A bad --card / --gpu-memory / calibration file, phrased for the user."""


class PackedTrialOverrun(UserError):
    """A packed trial ran out of GPU memory under its share's cap at its configured batch: the plan underestimated
    it. Raised inside the trial; the driver's callback (trainables.overrun) finds this class's name in the trial's
    error and has Ray retry the trial on a whole GPU. Without retries left (--max-failures 0) use --no-pack."""


# ---------------------------------------------------------------------------------------------------
# The model's size, from its config


@dataclass
class Dims:
    arch: str
    d_model: int
    d_ff: int
    enc_layers: int
    dec_layers: int
    heads: int
    inner: int  # heads x d_kv
    vocab: int
    gated: bool  # T5 v1.1 / mT5: wi_0 and wi_1
    tied: bool  # output head shares the embedding
    positions: int  # learned position embeddings (BART)
    source: str


def _dims_from_config(arch: str, cfg: dict[str, Any], source: str) -> Dims:
    if arch in ("t5", "mt5"):
        heads = cfg.get("num_heads", 12)
        return Dims(arch, cfg["d_model"], cfg["d_ff"], cfg["num_layers"], cfg.get("num_decoder_layers") or cfg["num_layers"],
                    heads, heads * cfg.get("d_kv", cfg["d_model"] // heads), cfg["vocab_size"],
                    "gated" in str(cfg.get("feed_forward_proj", "gated-gelu" if arch == "mt5" else "relu")),
                    bool(cfg.get("tie_word_embeddings", arch == "t5" and "gated" not in str(cfg.get("feed_forward_proj", "")))),
                    0, source)
    return Dims(arch, cfg["d_model"], cfg.get("encoder_ffn_dim", 4 * cfg["d_model"]), cfg["encoder_layers"],
                cfg["decoder_layers"], cfg.get("encoder_attention_heads", 16), cfg["d_model"], cfg["vocab_size"],
                False, True, cfg.get("max_position_embeddings", 1024) + 2, source)


def _config_json(checkpoint: str, model_path: str | None = None) -> tuple[dict[str, Any], str] | None:
    """The checkpoint's config.json from a folder or the local Hugging Face cache; never the network."""
    for folder in (model_path, checkpoint):
        if folder and (Path(folder) / "config.json").is_file():
            return json.loads((Path(folder) / "config.json").read_text()), f"{folder}/config.json"
    if "/" in checkpoint and not Path(checkpoint).exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(checkpoint, "config.json")
        except Exception:  # an odd id or cache layout: fall back to the known dimensions
            cached = None
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text()), f"cached {checkpoint}/config.json"
    return None


def model_dims(arch: str, checkpoint: str, model_path: str | None = None) -> Dims:
    """The model's shape from its config.json when on disk, else the real checkpoint's known dimensions."""
    from trainables.models import REAL_DIMS

    found = _config_json(checkpoint, model_path)
    if found:
        try:
            return _dims_from_config(arch, found[0], found[1])
        except KeyError:
            pass  # not the family's config: use the known dimensions
    known = dict(REAL_DIMS[arch])
    if arch in ("t5", "mt5"):
        known["feed_forward_proj"] = "gated-gelu"
        known["tie_word_embeddings"] = False
    return _dims_from_config(arch, known, "known dimensions (trainables/models.py REAL_DIMS)")


def linear_modules(d: Dims) -> list[tuple[str, int, int, int, str]]:
    """(name, in, out, count, "enc"|"dec") of the stacks' linear layers, by the names LoRA targets use."""
    if d.arch in ("t5", "mt5"):
        ff = [("wi_0", d.d_model, d.d_ff), ("wi_1", d.d_model, d.d_ff)] if d.gated else [("wi", d.d_model, d.d_ff)]
        ff.append(("wo", d.d_ff, d.d_model))
        attn = [("q", d.d_model, d.inner), ("k", d.d_model, d.inner), ("v", d.d_model, d.inner), ("o", d.inner, d.d_model)]
        enc, dec = attn + ff, attn + attn + ff
    else:
        attn = [(n, d.d_model, d.d_model) for n in ("q_proj", "k_proj", "v_proj", "out_proj")]
        ff = [("fc1", d.d_model, d.d_ff), ("fc2", d.d_ff, d.d_model)]
        enc, dec = attn + ff, attn + attn + ff
    return [(n, i, o, d.enc_layers, "enc") for n, i, o in enc] + [(n, i, o, d.dec_layers, "dec") for n, i, o in dec]


def parameter_count(d: Dims) -> int:
    stack = sum(i * o * c for _, i, o, c, _ in linear_modules(d))
    embeddings = d.vocab * d.d_model * (1 if d.tied else 2) + d.positions * d.d_model * 2
    return stack + embeddings


# ---------------------------------------------------------------------------------------------------
# Workload features of one experiment


@dataclass
class Features:
    """What the calibration's coefficients multiply. Bytes are raw counts (see each comment)."""

    static_gib: float  # weights as loaded (4-bit stack or fp32) + LoRA params with grads and Adam state
    act_gib: float  # saved activations of one training micro-batch (encoder/decoder layers, attention)
    logit_gib: float  # the training logits: micro-batch x decoder length x vocab, 4 bytes each
    gen_gib: float  # generation of one eval batch: KV caches, expanded encoder states, beams' logits, 4 bytes
    module_calls: float  # linear-layer calls per training micro-batch (base + LoRA + 4-bit dequant, x recompute)
    tflop: float  # FLOPs of one training micro-batch, in 1e12
    gen_calls: float  # decoder linear-layer calls per generated token x generated tokens, per eval batch
    gen_vocab: float  # beam hypotheses x vocab x generated tokens per eval batch, in 1e9 (logits processing)
    gen_ngram: float  # hypotheses x tokens^2 / 2 per eval batch, in 1e6 (no_repeat_ngram bookkeeping)
    gen_tb: float  # bytes read from GPU memory per eval batch (weights + KV caches per generated token), in 1e12
    params: int
    trainable: int
    checkpointed: bool = False  # gradient checkpointing: its activations have their own coefficient (mem_act_gc)


def _lora_params(d: Dims, targets: Iterable[str], rank: int) -> tuple[int, int]:
    """(LoRA parameters, LoRA-wrapped stack modules)."""
    targets = set(targets)
    rank = min(rank, d.d_model)
    params = sum(rank * (i + o) * c for n, i, o, c, _ in linear_modules(d) if n in targets)
    calls = sum(c for n, _, _, c, _ in linear_modules(d) if n in targets)
    if "lm_head" in targets:
        params += rank * (d.d_model + d.vocab)
    if targets & {"embed_tokens", "shared"}:
        params += rank * (d.d_model + d.vocab)
    return params, calls


def features(exp: ExperimentConfig, d: Dims, load_in_4bit: bool | None = None, batch: int | None = None) -> Features:
    """`load_in_4bit`, `batch` (the training micro-batch): what a run really did or will do, where it differs from
    the config (the speed plan's larger micro-batch, an OOM back-off)."""
    t, tok, gen, q = exp.training, exp.tokenizer, exp.generation, exp.qlora
    four_bit = (q.use_qlora and q.load_in_4bit) if load_in_4bit is None else load_in_4bit
    lora = q.use_qlora
    gc = t.gradient_checkpointing
    b, L, T = batch or t.per_device_train_batch_size, tok.encoder_max_len, tok.decoder_max_len
    mods = linear_modules(d)
    stack = sum(i * o * c for _, i, o, c, _ in mods)
    params = parameter_count(d)
    weights = stack * (0.53 if four_bit else 4) + (params - stack) * 4  # 4-bit NF4 + double-quant state; rest fp32
    if lora:
        trainable, lora_calls = _lora_params(d, q.target_modules, q.lora_rank)
    else:
        trainable, lora_calls = params, 0
    static = weights + trainable * 12  # + gradient and two Adam moments (fp32)
    n_stack = sum(c for *_, c, _ in mods)
    act = _activation_bytes(d, b, L, T, gc)
    # The logits term is sized as for the plain loss whether or not speed.chunked_loss is on: measured on an H100
    # (2026-11-26, benchmarks/results/packed-ray-2026-11-26-h100.json) 01_mt5_xlsum_ultimate still peaked at 16.5 GiB
    # at 4 x 4 with the chunked loss (16.6 with the plain loss the day before), where a modelled saving said 13.6,
    # and packed caps sized from that saving ran out of memory.
    logits = b * T * d.vocab * 4
    be, beams, gmax = t.per_device_eval_batch_size, gen.num_beams, gen.max_length
    hyps = be * beams
    kv, gen_bytes = _generation_bytes(d, be, hyps, L, gmax)
    tflop = _training_tflop(d, mods, b, L, T, gc)
    calls = (n_stack + 1) * (2 + (1 if gc else 0)) + lora_calls * 3 + (n_stack * 2 if four_bit else 0)
    dec_calls = sum(c for *_, c, where in mods if where == "dec") + 1
    # fast_eval generates from a merged half-precision copy: no 4-bit dequantization, no LoRA branch, bf16 weights
    merged = exp.speed.enabled and exp.speed.fast_eval
    gen_calls = dec_calls * gmax * (2 if four_bit and not merged else 1)
    gen_weights = params * 2 if merged else weights
    return Features(
        static_gib=static / GIB, act_gib=act / GIB, logit_gib=logits / GIB, gen_gib=gen_bytes / GIB,
        module_calls=calls, tflop=tflop, gen_calls=gen_calls, gen_vocab=hyps * d.vocab * gmax / 1e9,
        gen_ngram=(hyps * gmax * gmax / 2 / 1e6) if gen.no_repeat_ngram_size else 0.0,
        gen_tb=gmax * (gen_weights + kv / 2) / 1e12,
        params=params, trainable=trainable, checkpointed=gc,
    )


def _activation_bytes(d: Dims, b: int, L: int, T: int, gc: bool) -> float:
    """Saved activations of one training micro-batch of `b` rows (encoder length L, decoder length T)."""
    # Saved activations per token and layer, in bytes (bf16 autocast over fp32 layers, eager/SDPA attention).
    per_tok_enc = 60 * d.d_model + 18 * d.d_ff
    per_tok_dec = 90 * d.d_model + 18 * d.d_ff
    # T5's relative position bias keeps the L x L scores (fp32 softmax, dropout mask); BART runs PyTorch SDPA,
    # whose fused kernels keep none.
    att = 10 * d.heads if d.arch in ("t5", "mt5") else 0
    att_enc, att_dec = att * L * L, att * (T * T + T * L)
    if gc:  # layer inputs kept; one layer recomputed at a time in the backward pass
        act = b * (d.enc_layers * L + d.dec_layers * T) * 4 * d.d_model
        act += b * max(L * per_tok_enc + att_enc, T * per_tok_dec + att_dec)
    else:
        act = b * (d.enc_layers * (L * per_tok_enc + att_enc) + d.dec_layers * (T * per_tok_dec + att_dec))
    return act


def _generation_bytes(d: Dims, be: int, hyps: int, L: int, gmax: int) -> tuple[float, float]:
    """(KV caches, all of it) for one eval batch of `be` rows and `hyps` beam hypotheses: generation with
    beams (KV caches in half precision, encoder states expanded per beam, per-step logits of every hypothesis
    in fp32), and the encoder's own forward pass."""
    kv = d.dec_layers * 2 * hyps * (L + gmax) * d.inner * 2
    return kv, kv + hyps * L * d.d_model * 4 + 3 * hyps * d.vocab * 4 + be * d.heads * L * L * 4 * 3


def _training_tflop(d: Dims, mods, b: int, L: int, T: int, gc: bool) -> float:
    """FLOPs of one training micro-batch (forward, backward at twice the forward, a recompute), in 1e12."""
    stack = sum(i * o * c for _, i, o, c, _ in mods)
    enc_lin = sum(i * o * c for _, i, o, c, where in mods if where == "enc")
    dec_lin = stack - enc_lin
    fwd = 2 * (enc_lin * b * L + dec_lin * b * T + d.d_model * d.vocab * b * T)
    fwd += 4 * b * d.inner * (d.enc_layers * L * L + d.dec_layers * (T * T + T * L))
    return fwd * (3 + (1 if gc else 0)) / 1e12


# ---------------------------------------------------------------------------------------------------
# Calibration: per-card coefficients, fitted from real-size runs

# The FLOP term's share of the card's dense bf16 rate is fitted (`flop_utilisation`; this default where a table has
# none or the rows can't tell); the bandwidth term is fixed at 60% of the datasheet bandwidth. On a card without its
# own table the FLOP term scales by the datasheet ratio at the calibrated card's utilisation.
FLOP_UTILISATION = 0.35
BANDWIDTH_UTILISATION = 0.6
TRAIN_TERMS = ("module_calls",)  # seconds per training micro-batch = s_per_call x module_calls + FLOP term
GEN_TERMS = ("gen_calls", "gen_vocab", "gen_ngram")  # seconds per eval batch = these x coefficients + bytes term


@dataclass
class Calibration:
    card: str
    key: str
    memory_gib: float
    measured: str
    source: str
    command: str
    coefficients: dict[str, float]
    fit: list[dict[str, Any]] = field(default_factory=list)
    notes: str = ""
    path: str = ""


def calibration_path(key: str) -> Path:
    return CALIBRATION_DIR / f"{key}.json"


def load_calibration(key: str) -> Calibration:
    path = calibration_path(key)
    try:
        raw = json.loads(path.read_text())
        calib = Calibration(**{k: raw[k] for k in ("card", "key", "memory_gib", "measured", "source", "command",
                                                    "coefficients")}, fit=raw.get("fit", []), notes=raw.get("notes", ""),
                            path=str(path))
    except FileNotFoundError:
        raise PlanError(f"{path}: no calibration for {key}; run `python tune_main7.py plan --calibrate` on that card, "
                        "or plan with --card h100") from None
    except (ValueError, KeyError, TypeError) as err:
        raise PlanError(f"{path}: not a calibration table ({err}); restore it from git or rerun `plan --calibrate`") from None
    return calib


def _nnls(rows: list[list[float]], y: list[float]) -> list[float]:
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


def _card_of(name: str) -> Card:
    low = name.lower()
    for key, needle in (("h200", "h200"), ("h100", "h100"), ("a100-80", "a100-sxm4-80"), ("a100-80", "a100 80"),
                        ("a100-80", "a100-pcie-80"), ("a100-40", "a100"), ("rtx3090", "3090")):
        if needle in low:
            return CARDS[key]
    return Card(low.replace(" ", "-")[:40], name, 0.0, CARDS["h100"].bf16_tflops, CARDS["h100"].bandwidth_tbs)


def _flop_s(f: Features, card: Card, c: dict[str, float] | None = None) -> float:
    return f.tflop / (card.bf16_tflops * (c or {}).get("flop_utilisation", FLOP_UTILISATION))


def _fixed_gen_s(f: Features, card: Card) -> float:
    return f.gen_tb / (card.bandwidth_tbs * BANDWIDTH_UTILISATION)


def fit_calibration(rows: list[dict[str, Any]], experiments: dict[str, dict[str, Any]], *, source: str = "",
                    command: str = "", measured: str = "", keep_memory_from: Calibration | None = None) -> Calibration:
    """Coefficients from `benchmarks/gpu_configs.py` result rows (real size, one card), one per config. Each row's
    features are those of the micro-batch and accumulation it really trained with (eff_train_batch_size,
    eff_gradient_accumulation_steps: the speed plan's larger micro-batch, or an OOM back-off's smaller one).

    Memory: training peak = fixed + a x activations + l x logits (fitted on configs without gradient
    checkpointing, whose training peak is measured cleanly; the logits term is the same with the chunked loss, as
    measured); generation peak = fixed + g x generation bytes. Rows that stepped
    down their micro-batch after an OOM are left out of the memory fit (their peak includes the failed attempt);
    a memory coefficient with fewer than two clean rows that carry its feature is kept from `keep_memory_from`
    (the card's table so far), and the table's notes say which.
    Time: steady optimizer step = accumulation x (s_per_call x calls + FLOP term) + s_per_step; one eval batch =
    eval_fixed_s + coefficients x (calls, vocab, n-gram) + bytes term; the first step's extra is a median; loading
    is a fit over params, once per attempt (an OOM'd attempt reloads the model)."""
    import statistics

    rows = [r for r in rows if r.get("ok") and r.get("name") in experiments and not r.get("memory_cap_gib")]
    if len(rows) < 2:
        raise PlanError("calibration needs at least two successful real-size benchmark rows (gpu_configs.py)")
    card = _card_of(rows[0]["card"])
    feats = {r["name"]: features(experiments[r["name"]], model_dims(experiments[r["name"]].model.architecture,
                                                                      experiments[r["name"]].model.checkpoint,
                                                                      r.get("model_path")), r.get("eff_load_in_4bit"),
                                   batch=row_batch(experiments[r["name"]], r)[0])
             for r in rows}
    clean = [r for r in rows if not stepped_down(r)]
    kept, fitted = [], []
    base = dict(keep_memory_from.coefficients) if keep_memory_from else {}
    if "mem_act" in base:
        base.setdefault("mem_act_gc", base["mem_act"])  # tables before mem_act_gc had one activation coefficient

    def memory_fit(names: tuple[str, ...], attrs: tuple[str, ...], use: list[dict[str, Any]], target,
                   fallback: list[dict[str, Any]]) -> list[float | None]:
        """Fit the coefficients `names` (features `attrs`) on the clean rows `use`; keep from `base` those with fewer
        than two such rows carrying their feature. Without a table to keep from: on `fallback` rows where `use` has
        fewer than two (as before there was a choice). None: no row carries the feature."""
        if not base and len(use) < 2:
            use = fallback
        carried = {n: sum(1 for r in use if getattr(feats[r["name"]], a) > 0) for n, a in zip(names, attrs)}
        keep = [n for n in names if carried[n] < 2 and n in base]
        free = [(n, a) for n, a in zip(names, attrs) if n not in keep and carried[n]]
        y = [target(r) - sum(base[n] * getattr(feats[r["name"]], a) for n, a in zip(names, attrs) if n in keep)
             for r in use]
        got = dict(zip([n for n, _ in free], _nnls([[getattr(feats[r["name"]], a) for _, a in free] for r in use], y)
                       if free else []))
        kept.extend(keep)
        fitted.extend(f"{n} ({carried[n]} rows)" for n in got)
        return [base[n] if n in keep else got.get(n) for n in names]

    def gc_of(r: dict[str, Any]) -> bool:
        return experiments[r["name"]].training.gradient_checkpointing

    def train_target(r: dict[str, Any]) -> float:
        return r["peak_gpu_train_gib"] - feats[r["name"]].static_gib

    a, l = memory_fit(("mem_act", "mem_logit"), ("act_gib", "logit_gib"), [r for r in clean if not gc_of(r)],
                      train_target, [r for r in rows if not gc_of(r)] or rows)
    a, l = a or 0.0, l or 0.0
    (a_gc,) = memory_fit(("mem_act_gc",), ("act_gib",), [r for r in clean if gc_of(r)],
                         lambda r: train_target(r) - l * feats[r["name"]].logit_gib, [r for r in rows if gc_of(r)])
    a_gc = a if a_gc is None else a_gc  # no checkpointed row at all: the plain coefficient
    # generation sets the peak where the training peak is well below the total (checkpointed BART)
    gen_rows = [r for r in clean if r["peak_gpu_gib"] > 1.1 * r["peak_gpu_train_gib"]]
    (g,) = memory_fit(("mem_gen",), ("gen_gib",), gen_rows, lambda r: r["peak_gpu_gib"] - feats[r["name"]].static_gib,
                      [r for r in rows if r["peak_gpu_gib"] > 1.1 * r["peak_gpu_train_gib"]] or rows)
    g = g or 0.0
    step_s = [r["train_label_tokens"] / r["optimizer_steps"] / r["train_tok_s_after_step1"] for r in rows]
    accum = [row_batch(experiments[r["name"]], r)[1] for r in rows]
    # step = accumulation x (s_per_call x calls + tflop / (card's bf16 rate x utilisation)) + s_per_step
    call, per_flop, per_step = _nnls([[k * feats[r["name"]].module_calls, k * feats[r["name"]].tflop / card.bf16_tflops,
                                       1.0] for k, r in zip(accum, rows)], step_s)
    utilisation = 1 / per_flop if per_flop > 0 else FLOP_UTILISATION
    if per_flop <= 0:  # the rows can't see the FLOPs: the term at the default utilisation, the rest refitted
        call, per_step = _nnls([[k * feats[r["name"]].module_calls, 1.0] for k, r in zip(accum, rows)],
                               [s - k * _flop_s(feats[r["name"]], card) for s, k, r in zip(step_s, accum, rows)])
    gen = _nnls([[*(getattr(feats[r["name"]], t) for t in GEN_TERMS), 1.0] for r in rows],
                [r["eval_gen_s"] - _fixed_gen_s(feats[r["name"]], card) for r in rows])
    warm = statistics.median(max(0.0, r["train_s"] - s * r["optimizer_steps"]) for r, s in zip(rows, step_s))
    # every attempt loads the model; a failed one also runs (part of) a first step
    load_rows = [[1 + failed_attempts(r), (1 + failed_attempts(r)) * feats[r["name"]].params / 1e9] for r in rows]
    load = _nnls(load_rows, [max(0.1, r["run_trial_s"] - r["train_s"] - r["eval_gen_s"] - failed_attempts(r) * warm)
                             for r in rows])
    reserved = statistics.median(r["peak_gpu_reserved_gib"] / r["peak_gpu_gib"] for r in clean or rows)
    coef = {"mem_act": a, "mem_act_gc": a_gc, "mem_logit": l, "mem_gen": g, "s_per_call": call, "s_per_step": per_step,
            "flop_utilisation": utilisation,
            **{f"gen_s_per_{t.removeprefix('gen_')}": c for t, c in zip(GEN_TERMS, gen[:-1])}, "eval_fixed_s": gen[-1],
            "first_step_extra_s": warm, "load_s": load[0], "load_s_per_gparam": load[1], "reserved_ratio": reserved,
            "trial_start_s": 8.0, "packed_slowdown": PACKED_SLOWDOWN}
    if not clean and "reserved_ratio" in base:  # every peak includes a failed attempt: reserved/allocated too
        coef["reserved_ratio"] = base["reserved_ratio"]
        kept.append("reserved_ratio")
    calib = Calibration(card=rows[0]["card"], key=card.key, memory_gib=card.memory_gib or 0.0,
                        measured=measured, source=source, command=command, coefficients=coef)
    left_out = [r["name"] for r in rows if stepped_down(r)]
    calib.notes = (f"Memory: fitted here: {', '.join(fitted) or 'none'}; kept from "
                   f"{Path(keep_memory_from.path).name if keep_memory_from and keep_memory_from.path else 'the previous table'} "
                   f"(measured {keep_memory_from.measured if keep_memory_from else '-'}): {', '.join(kept) or 'none'}; "
                   f"left out of the memory fit (peak includes an OOM'd larger micro-batch): {', '.join(left_out) or 'none'}. "
                   "Features at each row's effective micro-batch and accumulation.")
    for r in rows:
        p = predict_benchmark(experiments[r["name"]], r, calib, feats[r["name"]], card)
        calib.fit.append({"name": r["name"], "batch": "x".join(map(str, row_batch(experiments[r["name"]], r))),
                          "peak_clean": not stepped_down(r),
                          "peak_gib": [r["peak_gpu_gib"], round(p["peak_gib"], 2)],
                          "step_s": [round(r["train_label_tokens"] / r["optimizer_steps"] / r["train_tok_s_after_step1"], 3),
                                     round(p["step_s"], 3)],
                          "eval_batch_s": [r["eval_gen_s"], round(p["eval_batch_s"], 2)],
                          "run_trial_s": [r["run_trial_s"], round(p["run_trial_s"], 1)]})
    return calib


def save_calibration(calib: Calibration, path: Path | None = None) -> Path:
    path = Path(path or calibration_path(calib.key))
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in asdict(calib).items() if k != "path"}
    data["coefficients"] = {k: float(f"{v:.6g}") for k, v in calib.coefficients.items()}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------
# Predictions


def _peaks(f: Features, c: dict[str, float]) -> tuple[float, float]:
    act = c.get("mem_act_gc", c["mem_act"]) if f.checkpointed else c["mem_act"]  # tables before mem_act_gc: one
    train = f.static_gib + act * f.act_gib + c["mem_logit"] * f.logit_gib
    return train, f.static_gib + c["mem_gen"] * f.gen_gib


def _micro_s(f: Features, c: dict[str, float], card: Card) -> float:
    return c["s_per_call"] * f.module_calls + _flop_s(f, card, c)


def _eval_batch_s(f: Features, c: dict[str, float], card: Card) -> float:
    return (c["eval_fixed_s"] + sum(c[f"gen_s_per_{t.removeprefix('gen_')}"] * getattr(f, t) for t in GEN_TERMS)
            + _fixed_gen_s(f, card))


def predict_benchmark(exp: ExperimentConfig, row: dict[str, Any], calib: Calibration, f: Features | None = None,
                      card: Card | None = None) -> dict[str, float]:
    """What the plan says for a `gpu_configs.py` run of `exp` (its steps, one eval batch), to compare with `row`."""
    card = card or _card_of(calib.card)
    c = calib.coefficients
    batch, accum = row_batch(exp, row)
    f = f or features(exp, model_dims(exp.model.architecture, exp.model.checkpoint), batch=batch)
    train, gen = _peaks(f, c)
    step = accum * _micro_s(f, c, card) + c["s_per_step"]
    steps = row.get("optimizer_steps") or 3
    ev = _eval_batch_s(f, c, card)
    train_s = steps * step + c["first_step_extra_s"]
    start = (1 + failed_attempts(row)) * _load_s(f, c) + failed_attempts(row) * c["first_step_extra_s"]
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


def _load_s(f: Features, c: dict[str, float]) -> float:
    return c["load_s"] + c["load_s_per_gparam"] * f.params / 1e9


@dataclass
class TrialPlan:
    name: str
    arch: str
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
    under. With speed's micro_batch on (trainables.speed.plan): its candidates, largest first, under
    `speed.memory_gib` (or the card, or a packed trial's share, whichever is tighter); unpacked, the OOM back-off then
    halves below the configured batch (seq2seq.retry_on_oom), packed it stops there (PackedTrialOverrun). With speed
    or micro_batch off, or on no card: the configured batch only, and no cap (None)."""
    from trainables import speed

    t, o = exp.training, exp.speed
    configured = (t.per_device_train_batch_size, t.gradient_accumulation_steps)
    if not (o.enabled and o.micro_batch and card.memory_gib):
        return [configured], None
    tries = speed.batch_candidates(*configured)
    while not packed_cap_gib and tries[-1][0] > 1:
        tries.append(speed.halve_batch(*tries[-1]))
    caps = [o.memory_gib, card.memory_gib - CONTEXT_GIB, *([packed_cap_gib] if packed_cap_gib else [])]
    return tries, min(caps)


def choose_batch(exp: ExperimentConfig, d: Dims, c: dict[str, float], card: Card, packed_cap_gib: float | None = None
                 ) -> tuple[tuple[int, int], int, float | None, Features]:
    """(the micro-batch the trial will train with, how many larger ones fail first, the cap, its features): the first
    of batch_attempts whose predicted training peak, with the allocator's fragmentation, fits under the cap."""
    tries, cap = batch_attempts(exp, card, packed_cap_gib)
    for i, batch in enumerate(tries):
        f = features(exp, d, batch=batch[0])
        if cap is None or _peaks(f, c)[0] * FRAGMENTATION <= cap or i == len(tries) - 1:
            return batch, i, cap, f
    raise AssertionError("unreachable: the last attempt is returned")


def plan_trial(exp: ExperimentConfig, n_train: int, n_dev: int, calib: Calibration, card: Card,
               model_path: str | None = None, packed_cap_gib: float | None = None) -> TrialPlan:
    t = exp.training
    d = model_dims(exp.model.architecture, exp.model.checkpoint, model_path)
    c = calib.coefficients
    (batch, accum), failed, cap, f = choose_batch(exp, d, c, card, packed_cap_gib)
    train_peak, gen_peak = _peaks(f, c)
    micro = math.ceil(n_train / batch)
    steps_per_epoch = max(1, math.ceil(micro / accum))
    epochs = t.num_train_epochs
    evals = count_evaluations(steps_per_epoch, epochs, t.eval_steps)
    train_s = epochs * (micro * _micro_s(f, c, card) + steps_per_epoch * c["s_per_step"]) + c["first_step_extra_s"]
    batches = math.ceil(n_dev / t.per_device_eval_batch_size)
    eval_s = evals * (batches * (_eval_batch_s(f, c, card) - c["eval_fixed_s"]) + c["eval_fixed_s"])
    # each failed attempt: a model load and a first step that runs out of memory (seq2seq.retry_on_oom reloads)
    start = c["trial_start_s"] + (1 + failed) * _load_s(f, c) + failed * c["first_step_extra_s"]
    peak = max(train_peak, gen_peak)
    configured = (t.per_device_train_batch_size, t.gradient_accumulation_steps)
    plan = TrialPlan(
        name=exp.name, arch=d.arch, params=f.params, dims_source=d.source, peak_gib=peak,
        peak_phase="train" if train_peak >= gen_peak else "gen", optimizer_steps=steps_per_epoch * epochs,
        evaluations=evals, train_s=train_s, eval_s=eval_s, trial_s=start + train_s + eval_s,
        fits=peak * FRAGMENTATION + CONTEXT_GIB <= card.memory_gib if card.memory_gib else True,
        batch=(batch, accum), configured_batch=configured, failed_attempts=failed, cap_gib=cap,
    )
    if cap is not None and train_peak * FRAGMENTATION > cap:
        plan.fits = False
        plan.notes.append(f"over the {cap:.1f} GiB cap even at micro-batch {batch}: CUDA OOM expected")
    elif batch < configured[0]:
        plan.notes.append(f"the configured micro-batch {configured[0]}x{configured[1]} is predicted over the "
                          f"{cap:.1f} GiB cap: the OOM back-off halves it to {batch}x{accum} (on a whole card only: "
                          "not packed)")
    if plan.fits and card.memory_gib and peak * c["reserved_ratio"] + CONTEXT_GIB > card.memory_gib:
        plan.notes.append("tight: fits, but not with the allocator's usual cache; a few slower steps are possible")
    elif not plan.fits and cap is None:
        plan.notes.append("CUDA OOM expected at the configured batch; the OOM back-off halves it (same effective batch)")
    return plan


# ---------------------------------------------------------------------------------------------------
# Packing: fractions of a GPU, memory caps, and the grid's makespan


def share_gib(peak_gib: float) -> float:
    """GPU memory a packed trial is given: its predicted peak plus headroom, plus its CUDA context."""
    return peak_gib * HEADROOM + CONTEXT_GIB


def pack(trials: list[TrialPlan], card_memory_gib: float, enabled: bool = True, gpus: int = 1) -> bool:
    """Set each trial's GPU fraction and memory cap; return whether any two trials can share a GPU.

    A trial's fraction is its share of the card, rounded up to 0.01; Ray places trials on one GPU while their
    fractions sum to at most 1. Packing is used only where at least two trials fit one card together; else
    (or disabled, or a trial that doesn't fit a card alone) a trial takes the whole card, uncapped."""
    fractions = {}
    # Ray fills GPU 0 first (first fit): on several GPUs no GPU takes more than its part of the trials
    floor = 1 / math.ceil(len(trials) / gpus) if gpus > 1 and trials else 0.0
    for t in trials:
        # a trial predicted below its configured micro-batch gets there by the back-off a packed trial doesn't have
        shareable = card_memory_gib and t.batch[0] >= t.configured_batch[0]
        need = max(floor, share_gib(t.peak_gib) / card_memory_gib) if shareable else 2.0
        fractions[t.name] = math.ceil(need / MIN_PACK_FRACTION_STEP - 1e-9) * MIN_PACK_FRACTION_STEP
    sizes = sorted(v for v in fractions.values() if v <= 1.0)
    packable = enabled and len(sizes) >= 2 and sizes[0] + sizes[1] <= 1.0
    for t in trials:
        f = fractions[t.name]
        if packable and f <= 1.0 - sizes[0] + 1e-9:  # shares the card with at least the smallest other trial
            t.gpu_fraction = round(f, 2)
            t.memory_cap_gib = cap_for_fraction(t.gpu_fraction, card_memory_gib)
        else:
            t.gpu_fraction, t.memory_cap_gib = 1.0, None
    return packable


def cap_for_fraction(fraction: float, card_memory_gib: float) -> float | None:
    """The allocator cap of a trial holding `fraction` of a card: its share less its CUDA context; None (uncapped)
    for a whole card."""
    return None if fraction >= 1.0 else round(fraction * card_memory_gib - CONTEXT_GIB, 2)


def longest_first(trials: list[TrialPlan]) -> list[TrialPlan]:
    return sorted(trials, key=lambda t: -t.trial_s)


def makespan(trials: list[TrialPlan], gpus: int, slowdown: float = PACKED_SLOWDOWN, packed: bool = True) -> float:
    """Wall-clock of the grid. Trials start in the given order (longest first) whenever their fraction fits a
    GPU (Ray starts any pending trial that fits); while k trials share a GPU each progresses at 1/(1 + slowdown
    x (k - 1)) of its speed alone."""
    gpus = max(1, gpus)
    free = [1.0] * gpus
    running: list[list[Any]] = []  # [remaining seconds of work alone, gpu, fraction]
    pending = list(trials)
    now = 0.0
    while pending or running:
        for t in list(pending):
            f = t.gpu_fraction if packed else 1.0
            gpu = next((g for g in range(gpus) if free[g] + 1e-9 >= f), None)
            if gpu is not None:
                free[gpu] -= f
                running.append([t.trial_s, gpu, f])
                pending.remove(t)
        if not running:
            break  # a trial wider than a GPU: can't happen with fractions <= 1
        share = {g: sum(1 for r in running if r[1] == g) for g in range(gpus)}
        rate = [1 / (1 + slowdown * (share[r[1]] - 1)) for r in running]
        dt = min(r[0] / v for r, v in zip(running, rate))
        now += dt
        for r, v in zip(running, rate):
            r[0] -= dt * v
        for r in [r for r in running if r[0] <= 1e-6]:
            free[r[1]] += r[2]
            running.remove(r)
    return now


# ---------------------------------------------------------------------------------------------------
# The plan of a grid, and how it is printed


@dataclass
class GridForecast:
    card: Card
    calibration: Calibration
    scaled: bool
    gpus: int
    n_train: int
    n_dev: int
    trials: list[TrialPlan]
    packed: bool
    sequential_s: float
    packed_s: float


def resolve_card(card: str | None = None, gpu_memory: float | None = None) -> tuple[Card, Calibration, bool]:
    """The card to plan for and its calibration (the H100's, scaled, where the card has none)."""
    if card and card not in CARDS:
        raise PlanError(f"--card {card}: unknown card; use one of {', '.join(CARDS)}, or --gpu-memory GB")
    if gpu_memory is not None and gpu_memory <= 0:
        raise PlanError(f"--gpu-memory {gpu_memory}: must be a positive number of GB")
    chosen = CARDS[card or "h100"]
    if gpu_memory is not None:
        chosen = Card(chosen.key if card else "custom", f"{chosen.name if card else 'a GPU'} with {gpu_memory:g} GB",
                      gpu_memory * 1e9 / GIB, chosen.bf16_tflops, chosen.bandwidth_tbs)
    key = chosen.key if calibration_path(chosen.key).exists() else "h100"
    return chosen, load_calibration(key), key != chosen.key


def local_card() -> tuple[str | None, float | None]:
    """The first local CUDA card's --card key (or None) and its memory in GB, through torch."""
    import torch

    if not torch.cuda.is_available():
        return None, None
    props = torch.cuda.get_device_properties(0)
    card = _card_of(props.name)
    return (card.key if card.key in CARDS else None), props.total_memory / 1e9


def forecast(experiments: list[ExperimentConfig], data_dir: Path, card: Card, calib: Calibration, scaled: bool,
             gpus: int = 1, pack_trials: bool = True, model_paths: dict[str, str] | None = None) -> GridForecast:
    from trainables.data import read_split

    n_train = len(read_split(Path(data_dir), "train", warn=False).frame)  # the run's own checks already warned
    n_dev = len(read_split(Path(data_dir), "dev", warn=False).frame)
    paths = model_paths or {}
    trials = [plan_trial(e, n_train, n_dev, calib, card, paths.get(e.model.checkpoint)) for e in experiments]
    gpus = max(1, gpus)
    packed = pack(trials, card.memory_gib, enabled=pack_trials, gpus=gpus)
    by_name = {e.name: e for e in experiments}
    for i, t in enumerate(trials):  # under a packed share tighter than its cap a trial may run a smaller micro-batch
        if t.memory_cap_gib and t.cap_gib and t.memory_cap_gib < t.cap_gib:
            again = plan_trial(by_name[t.name], n_train, n_dev, calib, card, paths.get(by_name[t.name].model.checkpoint),
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
    return GridForecast(card=card, calibration=calib, scaled=scaled, gpus=gpus, n_train=n_train, n_dev=n_dev,
                        trials=trials, packed=packed, sequential_s=sequential, packed_s=packed_s)


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


# ---------------------------------------------------------------------------------------------------
# Inside a trial: the memory cap, and what is recorded


def trial_resources(config: dict[str, Any], use_gpu: bool = True) -> dict[str, float]:
    """Ray's request for one trial, read from Ray's plain trial config (run.placement, by experiment name): its
    planned GPU fraction, else one whole GPU (a CPU trial: one CPU)."""
    if not use_gpu:
        return {"cpu": 1}
    placed = (config.get("run", {}).get("placement") or {}).get(config.get("experiment", {}).get("name")) or {}
    return {"cpu": 1, "gpu": float(placed.get("gpu") or 1)}


def granted_gpu_fraction() -> float | None:
    """The GPU fraction Ray gave this trial as it runs (after any re-placement: trainables.overrun), or None
    outside a Tune trial (a benchmark or test calling run_trial directly) and for a CPU trial."""
    import sys
    import warnings

    ray = sys.modules.get("ray")  # a Tune trial has imported Ray; anything else needs no Ray import here
    if ray is None or not ray.is_initialized():
        return None
    from ray import tune

    with warnings.catch_warnings():  # outside a trial Tune warns once and returns None
        warnings.simplefilter("ignore")
        try:
            resources = tune.get_context().get_trial_resources()
        except Exception:  # noqa: BLE001 - no Tune session here
            return None
    gpu = float(resources.required_resources.get("GPU", 0.0)) if resources is not None else 0.0
    return gpu or None


def apply_memory_cap(placed: Placement | None, granted: float | None = None) -> dict[str, Any]:
    """Cap this process's CUDA allocator at the trial's share; return the eff_* record of the placement.

    `granted`: the GPU fraction Ray really gave the trial (granted_gpu_fraction; None: the plan's). Where Ray gave
    more than the plan (a retry after an overrun), the cap follows Ray's fraction: none for a whole GPU.
    Past the cap an allocation raises the ordinary CUDA OOM, so the batch back-off works as on a smaller card."""
    eff: dict[str, Any] = {"eff_gpu_fraction": 1.0, "eff_memory_cap_gib": None, "eff_packed": False,
                           "eff_replaced": False}
    if not placed:
        return eff
    fraction = placed.gpu if granted is None else round(granted, 4)
    eff.update(eff_gpu_fraction=fraction, eff_predicted_peak_gib=placed.predicted_peak_gib,
               eff_predicted_trial_s=placed.predicted_trial_s, eff_replaced=fraction > placed.gpu + 1e-9)
    import torch

    if not torch.cuda.is_available():
        return eff
    total = torch.cuda.get_device_properties(0).total_memory
    cap = placed.memory_cap_gib if abs(fraction - placed.gpu) < 1e-9 else cap_for_fraction(fraction, total / GIB)
    if not cap:
        return eff
    share = min(1.0, cap * GIB / total)
    torch.cuda.set_per_process_memory_fraction(share, 0)
    eff.update(eff_memory_cap_gib=round(share * total / GIB, 2), eff_packed=fraction < 1.0)
    return eff


def replacement_note(placed: Placement, eff: dict[str, Any]) -> str:
    """The eff_notes line of a trial that Ray re-placed after it overran its packed share."""
    return (f"re-placed after overrunning its packed share: planned {placed.gpu:g} of the GPU (cap "
            f"{placed.memory_cap_gib} GiB), ran on {eff['eff_gpu_fraction']:g} (cap {eff['eff_memory_cap_gib']} GiB)")


def overrun_error(name: str, eff: dict[str, Any], batch: int, accumulation: int) -> PackedTrialOverrun:
    """What a packed trial raises when it runs out of memory under its cap at its configured batch."""
    return PackedTrialOverrun(
        f"{name}: CUDA out of memory at per-device batch {batch} x {accumulation} accumulation under its packed "
        f"share's cap of {eff.get('eff_memory_cap_gib')} GiB ({eff.get('eff_gpu_fraction')} of the GPU, predicted peak "
        f"{eff.get('eff_predicted_peak_gib')} GiB): the trial overran its planned share and will be retried on the "
        "whole GPU from its last checkpoint (with --max-failures 0 it is not: rerun with --no-pack)")


def local_card_cheap() -> tuple[str | None, float | None]:
    """Like local_card, through nvidia-smi (no torch import: `plan` stays fast); (None, None) without a GPU."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None, None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        name, mib = [x.strip() for x in out[0].split(",")]
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None, None
    card = _card_of(name)
    return (card.key if card.key in CARDS else None), float(mib) * 2**20 / 1e9


# ---------------------------------------------------------------------------------------------------
# plan --calibrate: measure this card with the real-size benchmark, fit, write the table


def calibrate(args) -> int:
    """Run `benchmarks/gpu_configs.py` (a few real-size steps and one eval batch per config, each in a fresh
    process) on this machine's GPU, fit the coefficients and write trainables/calibration/<card>.json."""
    import datetime as dt
    import subprocess
    import sys
    import tempfile

    import torch

    from trainables.config import apply_mode, load_search_space

    if not torch.cuda.is_available():
        raise PlanError("plan --calibrate measures this machine's GPU, and it has none; plan with --card instead")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_configs.py"
    if not script.is_file():
        raise PlanError(f"{script}: not found; --calibrate needs the repository checkout's benchmarks/ folder")
    configs = load_search_space(Path(args.search_space), args.only)
    out = Path(tempfile.mkdtemp(prefix="calibrate-")) / "bench.json"
    steps = os.environ.get("TUNE_MAIN7_CALIBRATE_STEPS", "3")
    cmd = [sys.executable, str(script), "--steps", steps, "--out", str(out), "--search-space", str(args.search_space),
           "--only", *[c.name for c in configs]]
    print("calibrating:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=False)
    if not out.is_file():
        raise PlanError("the calibration run wrote no results; see its output above")
    rows = json.loads(out.read_text())
    experiments = {c.name: apply_mode(c, "full")[0] for c in configs}
    try:  # memory coefficients the new rows can't give (OOM-contaminated peaks) are kept from the card's table so far
        previous = load_calibration(_card_of(str(rows[0].get("card", ""))).key) if rows else None
    except PlanError:
        previous = None
    calib = fit_calibration(rows, experiments, source=str(out), measured=dt.date.today().isoformat(),
                            keep_memory_from=previous,
                            command=" ".join(["python tune_main7.py plan --calibrate", *(["--only", *args.only] if args.only else [])]))
    path = save_calibration(calib)
    print(f"wrote {path} for {calib.card}")
    print(format_fit(calib))
    return 0


def format_fit(calib: Calibration) -> str:
    lines = ["| config | batch | peak GiB measured / fitted | step s measured / fitted | eval batch s measured / fitted "
             "| run_trial s measured / fitted |", "|---|---|---|---|---|---|"]
    for f in calib.fit:
        trial = f.get("run_trial_s")
        lines.append(f"| {f['name']} | {f.get('batch', '')} | {f['peak_gib'][0]:.2f} / {f['peak_gib'][1]:.2f}"
                     f"{'' if f.get('peak_clean', True) else ' (measured peak includes an OOM attempt)'} | "
                     f"{f['step_s'][0]:.3f} / {f['step_s'][1]:.3f} | {f['eval_batch_s'][0]:.2f} / {f['eval_batch_s'][1]:.2f} | "
                     + (f"{trial[0]:.1f} / {trial[1]:.1f} |" if trial else "- |"))
    return "\n".join(lines)
