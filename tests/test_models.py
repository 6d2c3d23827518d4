"""Models on the CPU: LoRA targets per family, QLoRA in 4 bits, trainable speaker-token rows, the precision and
Unsloth decisions, OOM back-off and NaN stop (through `run_trial`, without Ray), and the settings record.

Tiny stand-ins (built from data/train.csv, without the warm start) live in the session's `standin_cache`."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

from tests.conftest import ROOT, set_fields, write_sample
from tests.fault_injection import callback_spec
from trainables.config import ExperimentConfig, TrialConfig, apply_mode, load_search_space
from trainables.trial.families.common import load_tokenizer, resolve_lora_targets
from trainables.trial.families.seq2seq.model import load_model
from trainables.trial.models import Environment, decide_settings
from trainables.trial.recipe import run_trial
from trainables.trial.backoff import halve_batch

MT5_CONFIG = "01_mt5_xlsum_optimized_v2"
BART_CONFIG = "01_baseline_kobart_rtx3090"
T5_CONFIG = "02_eenzeenee_t5_rtx3090"

CPU = Environment(cuda=False, bf16_supported=False, device_name="cpu", unsloth_installed=False, bitsandbytes_installed=True)


def gpu(bf16: bool = True, unsloth: bool = False, name: str = "Fake GPU") -> Environment:
    return Environment(cuda=True, bf16_supported=bf16, device_name=name, unsloth_installed=unsloth, bitsandbytes_installed=True)


# ---------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def configs() -> dict:
    return {c.name: c for c in load_search_space(ROOT / "search_spaces")}


def smoke_exp(configs, name: str, **changes) -> ExperimentConfig:
    """The config as smoke mode gives it, with section-level overrides: smoke_exp(c, n, qlora={...})."""
    exp, _ = apply_mode(configs[name], "smoke")
    for section, values in changes.items():
        set_fields(getattr(exp, section), **values)
    return exp


@pytest.fixture(scope="session")
def standins(standin_cache) -> dict:
    """Tiny stand-ins of each family as `build_standin` makes them (its tokenizer and config recipe), minus the
    few-second warm start (150 steps, a minute on a loaded 2-core machine), which these tests don't need:
    random weights exercise every path checked here."""
    from trainables.data import training_texts
    from trainables.trial.families.seq2seq.standin import build_standin

    texts = training_texts(ROOT / "data")
    cache = {}

    def get(arch: str) -> str:
        if arch not in cache:
            cache[arch] = str(build_standin(arch, texts, standin_cache, warm_start=False))
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """16 train and 4 dev rows of the shipped sample: run_trial in a few seconds."""
    d = tmp_path_factory.mktemp("tiny-data")
    write_sample(d, train=16, dev=4)
    return d


def build(exp: dict, path: str, env: Environment = CPU):
    settings = decide_settings(exp, env, "standin")
    tokenizer = load_tokenizer(path, exp.tokenizer.special_tokens)
    model, _ = load_model(exp, path, tokenizer, settings)
    return model, tokenizer, settings


def lora_wrapped(model) -> set[str]:
    from peft.tuners.lora import LoraLayer

    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def modules_named(model, leaf: str) -> list:
    return [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == leaf]


# ---------------------------------------------------------------------------------------------------
# LoRA targets per family


def test_mt5_lora_wraps_attention_and_gated_feed_forward(configs, standins):
    targets = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]
    exp = smoke_exp(configs, MT5_CONFIG, qlora={"load_in_4bit": False, "target_modules": targets})
    model, _, _ = build(exp, standins("mt5"))
    assert lora_wrapped(model) == set(targets)
    from peft.tuners.lora import LoraLayer

    for leaf in targets:  # every layer of that name, in encoder and decoder, not just one
        found = modules_named(model, leaf)
        assert found and all(isinstance(m, LoraLayer) for m in found), leaf


def test_bart_lora_wraps_attention_and_feed_forward(configs, standins):
    targets = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    exp = smoke_exp(configs, BART_CONFIG, qlora={"load_in_4bit": False, "target_modules": targets})
    model, _, _ = build(exp, standins("bart"))
    assert lora_wrapped(model) == set(targets)


def test_target_matching_nothing_is_an_error_naming_it(standins):
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(standins("mt5"))
    with pytest.raises(ValueError, match=r"\['wi'\]"):
        resolve_lora_targets(model, ["q", "wi"], [])


def test_embed_tokens_on_mt5_is_wrapped_or_mapped_to_shared(standins):
    import torch
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(standins("mt5"))
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    notes: list[str] = []
    resolved = resolve_lora_targets(model, ["q", "embed_tokens"], notes)
    if "embed_tokens" in names:  # transformers 5.24: encoder/decoder.embed_tokens are modules of their own
        assert resolved == ["q", "embed_tokens"] and not notes
    else:  # versions where they are the very module `shared` (named once by named_modules)
        assert resolved == ["q", "shared"]
    # The mapping itself, on a module tree where the embedding is only reachable as `shared`:
    tree = torch.nn.Module()
    tree.shared, tree.q = torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4)
    tree.encoder = torch.nn.Module()
    tree.encoder.embed_tokens = tree.shared  # the same object: named_modules() names it `shared` only
    notes = []
    assert resolve_lora_targets(tree, ["q", "embed_tokens"], notes) == ["q", "shared"]
    assert any("shared" in n and "embed_tokens" in n for n in notes)


# ---------------------------------------------------------------------------------------------------
# QLoRA: really 4-bit on the CPU, and the config's LoRA values


@pytest.mark.parametrize("four_bit", [True, False])
def test_qlora_quantizes_base_only_when_asked(configs, standins, four_bit):
    import bitsandbytes as bnb
    from peft import TaskType

    exp = smoke_exp(configs, BART_CONFIG, qlora={"load_in_4bit": four_bit, "lora_rank": 8, "lora_alpha": 24,
                                                   "lora_dropout": 0.07})
    model, _, settings = build(exp, standins("bart"))
    assert settings.load_in_4bit is four_bit
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert (n4 > 0) is four_bit
    cfg = model.peft_config["default"]
    assert cfg.task_type == TaskType.SEQ_2_SEQ_LM
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (8, 24, 0.07)
    assert set(cfg.target_modules) == set(exp.qlora.target_modules)


@pytest.mark.parametrize("name, arch", [(BART_CONFIG, "bart"), ("01_mt5_xlsum_ultimate", "mt5")])
def test_an_evaluation_leaves_the_4bit_model_computing_in_float32(configs, standins, name, arch):
    """On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit weight at its first eval-mode forward and then
    multiplies in bf16 (trainables.compat.keep_4bit_cpu_compute_as_configured): after an evaluation the model
    must still compute its float32 logits, its merged copy must be the same, and training must get the same
    gradients (without the fix: BART raised in the bias add, mT5's logits moved 7.6e-3)."""
    import torch

    from tests.conftest import trained_like
    from trainables.trial.speed import merged

    exp = smoke_exp(configs, name)
    assert exp.qlora.load_in_4bit
    model, tok, _ = build(exp, standins(arch))
    trained_like(model, seed=1)
    enc = tok(["#Person1#: 안녕하세요. 오늘 날씨가 좋네요.", "#Person2#: 네"], padding=True, return_tensors="pt",
              return_token_type_ids=False)
    batch = {**enc, "labels": tok(text_target=["인사한다.", "네"], padding=True, return_tensors="pt")["input_ids"]}

    def gradients():
        model.train()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same dropout masks both times
        model(**batch).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    before, copy_before = gradients(), merged.merged_copy(model, "fp32")
    model.eval()
    with torch.no_grad():
        model(**batch)  # an evaluation's forward
    assert merged.merge_error(model, copy_before, batch) < 1e-5
    assert merged.merge_error(copy_before, merged.merged_copy(model, "fp32"), batch) < 1e-6
    after = gradients()
    assert before.keys() == after.keys() and before
    for n in before:
        assert torch.allclose(before[n], after[n], rtol=1e-5, atol=1e-8), n


# ---------------------------------------------------------------------------------------------------
# New speaker-token rows are trained


@pytest.mark.parametrize("arch,name", [("mt5", MT5_CONFIG), ("bart", BART_CONFIG)])
def test_new_token_rows_get_gradients(configs, standins, arch, name):
    import torch

    exp = smoke_exp(configs, name, qlora={"load_in_4bit": False})
    model, tokenizer, _ = build(exp, standins(arch))
    new_ids = tokenizer.convert_tokens_to_ids(["#Person1#", "#Person2#"])
    assert all(i >= tokenizer.vocab_size for i in new_ids)  # added, not in the stand-in's learned vocabulary
    adapters = {n: p for n, p in model.named_parameters() if "trainable_tokens" in n and p.requires_grad}
    assert adapters, "no trainable_tokens adapter for the added tokens"
    enc = tokenizer(["#Person1#: 안녕하세요 #Person2#: 네"], return_tensors="pt", return_token_type_ids=False)
    labels = tokenizer(text_target=["#Person2#는 인사한다."], return_tensors="pt")["input_ids"]
    assert set(new_ids) & set(enc["input_ids"][0].tolist()) and set(new_ids) & set(labels[0].tolist())
    model.train()
    model(**enc, labels=labels).loss.backward()
    grads = {n: p.grad for n, p in adapters.items()}
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in grads.values()), {n: g is None for n, g in grads.items()}


# ---------------------------------------------------------------------------------------------------
# Precision and Unsloth decisions


@pytest.mark.parametrize("name", [MT5_CONFIG, T5_CONFIG])  # both ask for fp16 on a T5-family model
def test_fp16_on_t5_family_runs_bf16_on_a_bf16_card(configs, name):
    exp = apply_mode(configs[name], "full")[0]
    assert exp.training.fp16
    s = decide_settings(exp, gpu(bf16=True), "x")
    assert s.precision == "bf16" and any("fp16" in n and "bf16" in n for n in s.notes)


def test_fp16_on_t5_family_runs_fp32_without_bf16(configs):
    s = decide_settings(apply_mode(configs[T5_CONFIG], "full")[0], gpu(bf16=False), "x")
    assert s.precision == "fp32" and any("fp32" in n for n in s.notes)


def test_bf16_on_bart_without_bf16_falls_back_to_fp16(configs):
    exp = apply_mode(configs["03_high_learning_rate_rtx3090"], "full")[0]
    assert exp.training.bf16 and exp.model.architecture == "bart"
    s = decide_settings(exp, gpu(bf16=False, name="Tesla V100"), "x")
    assert s.precision == "fp16" and any("Tesla V100" in n and "fp16" in n for n in s.notes)


def test_bf16_on_t5_family_without_bf16_runs_fp32(configs):
    exp = apply_mode(configs["01_mt5_xlsum_ultimate"], "full")[0]
    assert decide_settings(exp, gpu(bf16=False), "x").precision == "fp32"


def test_bart_fp16_is_kept_on_a_gpu(configs):
    s = decide_settings(apply_mode(configs[BART_CONFIG], "full")[0], gpu(), "x")
    assert s.precision == "fp16" and s.load_in_4bit and s.lora


@pytest.mark.parametrize("name", [MT5_CONFIG, BART_CONFIG, "04_batch_optimization_rtx3090"])
def test_cpu_runs_fp32(configs, name):
    s = decide_settings(apply_mode(configs[name], "full")[0], CPU, "x")
    assert s.precision == "fp32" and s.device == "cpu" and any("no CUDA" in n for n in s.notes)


def test_unsloth_reasons(configs):
    exp = apply_mode(configs[BART_CONFIG], "full")[0]
    assert exp.qlora.use_unsloth
    # an encoder-decoder model never runs through Unsloth, whatever the machine: that is the reason recorded (the
    # machine's reasons, for decoder-only configs, are in tests/test_unsloth.py)
    for env in (CPU, gpu(unsloth=False), gpu(unsloth=True)):
        s = decide_settings(exp, env, "x")
        assert not s.unsloth and "encoder-decoder" in s.unsloth_reason, s.unsloth_reason
        assert any("unsloth off" in n for n in s.notes)
    exp.qlora.use_unsloth = False
    s = decide_settings(exp, gpu(unsloth=True), "x")
    assert (s.unsloth, s.unsloth_reason) == (False, "not requested") and not any("unsloth" in n for n in s.notes)


def test_4bit_off_without_bitsandbytes(configs):
    exp = apply_mode(configs[BART_CONFIG], "full")[0]
    env = Environment(cuda=True, bf16_supported=True, device_name="g", unsloth_installed=False, bitsandbytes_installed=False)
    s = decide_settings(exp, env, "x")
    assert not s.load_in_4bit and s.lora and any("bitsandbytes" in n for n in s.notes)


def test_lora_without_4bit_config4_keeps_meaning(configs):
    s = decide_settings(apply_mode(configs[T5_CONFIG], "full")[0], gpu(), "x")
    assert s.lora and not s.load_in_4bit


def test_settings_record_keys(configs):
    """The eff_* record of a config whose wishes this machine changes says what ran and why, in one string."""
    exp = apply_mode(configs[T5_CONFIG], "full")[0]  # asks for fp16 on a T5-family model
    exp.qlora.use_unsloth = True
    m = decide_settings(exp, gpu(bf16=False), "checkpoint:x").as_metrics()
    assert all(k.startswith("eff_") for k in m)
    assert (m["eff_device"], m["eff_precision"], m["eff_unsloth"], m["eff_model_source"]) == \
        ("cuda", "fp32", False, "checkpoint:x")
    assert m["eff_train_batch_size"] == exp.training.per_device_train_batch_size
    assert m["eff_gradient_accumulation_steps"] == exp.training.gradient_accumulation_steps
    notes = m["eff_notes"].split(" | ")  # one string for Tune's results table, one note per change
    assert len(notes) == 2 and "fp32" in notes[0] and notes[1].startswith("unsloth off: Unsloth has no encoder-decoder fast path")
    assert "eff_lora" in m and "eff_load_in_4bit" in m and m["eff_unsloth_reason"] in notes[1]


# ---------------------------------------------------------------------------------------------------
# OOM back-off and NaN stop


def test_halve_batch_math():
    assert halve_batch(8, 3) == (4, 6)
    assert halve_batch(6, 4) == (3, 8)
    assert halve_batch(5, 1) == (2, 2)  # odd batches round down: the effective batch may shrink slightly
    assert halve_batch(2, 16) == (1, 32)
    with pytest.raises(RuntimeError, match="batch 1"):
        halve_batch(1, 8)


def trial_config(exp: ExperimentConfig, model_path: str, data_dir: Path, **run) -> TrialConfig:
    """A trial on the CPU as the driver would describe it, validated as the trial validates it."""
    checkpoint = exp.model.checkpoint
    return TrialConfig.from_ray({
        "experiment": exp.model_dump(),
        "run": {
            "models": {checkpoint: {"model_path": model_path, "model_source": "standin:test"}},
            "data_dir": str(data_dir), "mode": "smoke", "torch_threads": 1,
            "environment": {"cuda": False, "bf16_supported": False, "device_name": "cpu",
                            "unsloth_installed": False, "bitsandbytes_installed": True},
            **run,
        },
    })


def small_trial_exp(configs, **training) -> ExperimentConfig:
    return smoke_exp(
        configs, BART_CONFIG,
        training={"num_train_epochs": 1, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 4,
                  "gradient_accumulation_steps": 1, "logging_steps": 1, "early_stopping_patience": None, **training},
        tokenizer={"encoder_max_len": 64, "decoder_max_len": 24},
        generation={"max_length": 24, "min_length": 1, "num_beams": 1},
        qlora={"load_in_4bit": False},
    )


@pytest.mark.slow  # a few trainings or CLI runs: ~10 s
def test_injected_oom_backs_off_to_a_fitting_batch(configs, standins, tiny_data):
    exp = small_trial_exp(configs, gradient_accumulation_steps=3)
    reports = []
    final = run_trial(trial_config(exp, standins("bart"), tiny_data, callbacks=[callback_spec(oom_above_batch=2)]),
                      lambda metrics, ckpt: reports.append((metrics, ckpt)))
    assert final["eff_train_batch_size"] == 2
    assert final["eff_gradient_accumulation_steps"] == 3 * 4  # 8 x 3 -> 4 x 6 -> 2 x 12
    assert "OOM at per-device batch 8" in final["eff_notes"] and "OOM at per-device batch 4" in final["eff_notes"]
    assert reports, "no evaluation reported after the back-off"
    metrics, ckpt = reports[-1]
    assert metrics["eff_train_batch_size"] == 2 and metrics["eff_gradient_accumulation_steps"] == 12
    assert math.isfinite(metrics["competition_score"])


def test_nan_loss_stops_the_trial(configs, standins, tiny_data):
    # The LoRA weights at 1e30 after the first step (what a far too high learning rate does; the schema refuses
    # one): the next forward overflows to inf/NaN.
    exp = small_trial_exp(configs, warmup_ratio=0.0, per_device_train_batch_size=4)
    reports = []
    with pytest.raises(FloatingPointError, match="training loss is"):
        run_trial(trial_config(exp, standins("bart"), tiny_data, callbacks=[callback_spec(blow_up_after_step=1)]),
                  lambda m, c: reports.append(m))
    assert not reports  # stopped before the epoch's evaluation


def test_trial_reports_effective_settings(configs, standins, tiny_data):
    exp = small_trial_exp(configs)
    reports = []
    final = run_trial(trial_config(copy.deepcopy(exp), standins("bart"), tiny_data), lambda m, c: reports.append(m))
    assert reports and reports[-1]["eff_precision"] == "fp32" and reports[-1]["eff_device"] == "cpu"
    assert reports[-1]["eff_train_batch_size"] == 8 and final["eff_gradient_accumulation_steps"] == 1
    assert "unsloth off: Unsloth has no encoder-decoder fast path for bart" in reports[-1]["eff_notes"]


@pytest.mark.slow  # a few trainings or CLI runs: ~10 s
def test_one_report_per_evaluation_with_the_train_loss_since_the_last(configs, standins, tiny_data, tmp_path):
    """eval_steps with accumulation, an evaluation falling on the epoch's end, and logging rarer than evaluation
    (the shipped configs' shape): each evaluated step is reported once, each report with a finite train loss; a
    resumed trial's time counts the time before the resume."""
    import shutil

    exp = small_trial_exp(configs, num_train_epochs=2, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                          eval_steps=2, logging_steps=50)  # 16 rows: 4 steps per epoch, evaluations at 2, 4, 6, 8
    reports = []

    def keep(metrics, ckpt):
        reports.append(metrics)
        shutil.copytree(ckpt, tmp_path / f"step-{metrics['step']}")

    run_trial(trial_config(copy.deepcopy(exp), standins("bart"), tiny_data), keep)
    assert [r["step"] for r in reports] == [2, 4, 6, 8]  # before: step 4 and step 8 reported twice
    assert all(math.isfinite(r["train_loss"]) and r["train_loss"] > 0 for r in reports)  # before: NaN in every one
    assert len({r["train_loss"] for r in reports}) == 4  # each the mean since the previous report

    resumed = []
    run_trial(trial_config(copy.deepcopy(exp), standins("bart"), tiny_data), lambda m, c: resumed.append(m),
              resume_from=str(tmp_path / "step-4"))
    assert [r["step"] for r in resumed] == [6, 8]
    assert resumed[0]["elapsed_s"] > reports[1]["elapsed_s"]  # before: restarted from zero
    assert resumed[0]["train_loss"] == pytest.approx(reports[2]["train_loss"], rel=1e-5)
