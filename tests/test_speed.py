"""The speed layer (trainables/trial/speed/) on the CPU: each speed-up leaves results unchanged where it should, the
plan is decided once, and `speed: off` gives the plain Seq2SeqTrainer path without importing the layer at all."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import trained_like
from tests.test_models import BART_CONFIG, CPU, build, configs, smoke_exp, standins, tiny_data, trial_config  # noqa: F401
from trainables.config import ExperimentConfig
from trainables.trial import speed
from trainables.trial.families import family_of
from trainables.trial.models import EffectiveSettings
from trainables.trial.recipe import run_trial
from trainables.trial.speed import generation, merged


@pytest.mark.parametrize("name, four_bit", [
    ("01_mt5_xlsum_ultimate", True),          # 4-bit mT5, LoRA on lm_head and the (shared) embeddings
    ("04_batch_optimization_rtx3090", True),  # 4-bit BART, tied head with LoRA on lm_head
    ("02_eenzeenee_t5_rtx3090", False),       # LoRA on an unquantized T5, new tokens' rows trained
])
def test_merged_copy_generates_what_the_training_model_generates(configs, standins, name, four_bit):
    exp = smoke_exp(configs, name)
    assert exp.qlora.load_in_4bit == four_bit
    model, tok, _ = build(exp, standins(exp.model.architecture))
    trained_like(model, seed=3)
    model.eval()
    copy_ = merged.merged_copy(model, "fp32")
    assert type(copy_) is type(model.get_base_model())  # the base model's own class, no peft, no 4-bit
    assert not any(type(p).__name__ == "Params4bit" for p in copy_.parameters())
    assert not any("lora" in n for n, _ in copy_.named_parameters())
    texts = ["#Person1#: 안녕하세요. 오늘 날씨가 좋네요.\n#Person2#: 네, 산책 갈까요?", "#Person1#: 전화번호가 뭐예요?"]
    enc = tok(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    labels = tok(text_target=["#Person1#과 #Person2#가 산책을 간다.", "번호를 묻는다."], padding=True, return_tensors="pt")["input_ids"]
    assert merged.merge_error(model, copy_, {**enc, "labels": labels}) < 1e-5
    with torch.no_grad():
        plain = model.generate(**enc, max_length=12, num_beams=2)
        fast = copy_.generate(**enc, max_length=12, num_beams=2)
    assert torch.equal(plain, fast)
    # beam search that leaves the cross-attention cache in place (equal across a dialogue's beams): same output
    cache = family_of(exp.model.architecture).generation_cache(4)
    with torch.no_grad():
        reordered = copy_.generate(**enc, max_length=12, min_length=10, num_beams=4)
        kept = copy_.generate(**enc, max_length=12, min_length=10, num_beams=4, past_key_values=cache)
    assert torch.equal(reordered, kept)
    assert cache.cross_attention_cache.get_seq_length() == enc["input_ids"].shape[1]  # generate() used our cache


def test_a_wrong_merge_is_caught(configs, standins):
    """The check that guards the fast path fails when the copy lacks the adapter."""
    exp = smoke_exp(configs, BART_CONFIG)
    model, tok, _ = build(exp, standins("bart"))
    trained_like(model, seed=3)
    model.eval()
    copy_ = merged.merged_copy(model, "fp32")
    with torch.no_grad():  # a copy whose output head is off by a factor (a merge gone wrong)
        copy_.lm_head.weight = torch.nn.Parameter(copy_.lm_head.weight * 2)
    enc = tok(["#Person1#: 안녕하세요."], return_tensors="pt", return_token_type_ids=False)
    batch = {**enc, "labels": tok(text_target=["인사한다."], return_tensors="pt")["input_ids"]}
    assert merged.merge_error(model, copy_, batch) > merged.MERGE_TOLERANCE


def test_length_sorted_batches_cover_every_row_once_longest_first():
    lengths = [5, 50, 7, 300, 12, 300, 1]
    batches = generation.length_sorted_batches(lengths, lambda n: 2 if n > 100 else 3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    assert [len(b) for b in batches] == [2, 3, 2]


def _settings(bs: int, accum: int) -> EffectiveSettings:
    return EffectiveSettings(device="cuda", precision="bf16", load_in_4bit=True, lora=True, unsloth=False,
                             unsloth_reason="", model_source="x", train_batch_size=bs, gradient_accumulation_steps=accum)


@pytest.mark.parametrize("bs, accum", [(6, 3), (5, 4), (4, 8), (12, 2), (8, 1)])
def test_larger_micro_batch_keeps_the_effective_batch_and_steps_back(configs, bs, accum):
    p = speed.decide(smoke_exp(configs, BART_CONFIG), (bs, accum), cuda=True)
    assert p.first_micro_batch == (bs * accum, 1)
    assert all(b * a == bs * accum for b, a in p.batch_candidates)
    # every split of the effective batch from the largest down to the configured one: 6 x 3 also tries 9 x 2
    assert [b for b, _ in p.batch_candidates] == [m for m in range(bs * accum, bs - 1, -1) if bs * accum % m == 0]
    assert (bs, accum) != (6, 3) or (9, 2) in p.batch_candidates
    seen = [p.first_micro_batch]
    while (step := speed.next_micro_batch(p, seen[-1])) is not None:
        seen.append(step)
    assert seen[-1] == (bs, accum)  # the OOM path ends at the configured batch, then the plain back-off takes over
    assert p.as_metrics()["eff_speed_configured_batch"] == f"{bs}x{accum}"


def test_the_plan_is_decided_once_and_frozen(configs):
    import dataclasses

    p = speed.decide(smoke_exp(configs, BART_CONFIG), (8, 3), cuda=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.memory_gib = 1.0
    cpu = speed.decide(smoke_exp(configs, BART_CONFIG), (8, 3), cuda=False)
    assert cpu.first_micro_batch == (8, 3) and cpu.memory_gib is None and not cpu.tf32
    assert "no CUDA GPU: configured micro-batch kept" in cpu.as_metrics()["eff_speed_notes"]


def test_attention_leaves_cudnn_out_on_a_gpu_and_restores_the_flags(configs):
    import torch

    before = torch.backends.cuda.cudnn_sdp_enabled()
    p = speed.decide(smoke_exp(configs, BART_CONFIG), (8, 3), cuda=True)
    with speed.attention_backends(p):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before  # a benchmark's next run in this process is unaffected
    assert p.as_metrics()["eff_speed_sdpa_backends"] == "flash, efficient, math (no cuDNN)"
    cpu = speed.decide(smoke_exp(configs, BART_CONFIG), (8, 3), cuda=False)
    with speed.attention_backends(cpu):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before  # nothing to change without a GPU
    assert cpu.sdpa_backends == "torch default"


def test_speed_off_is_the_plain_path(configs, standins, tiny_data, tmp_path):
    """`speed: off` leaves the layer out of every decision: no plan, the configured batch, no tf32, the plain
    cross-entropy in the token-mean loss, and the Trainer's own evaluate (no fast_evaluate hook)."""
    from trainables.trial import recipe
    from trainables.trial.callbacks import TrialRecord

    raw = json.loads(configs[BART_CONFIG].model_dump_json())
    raw["speed"] = False  # what `speed: off` in YAML parses to
    exp = ExperimentConfig.model_validate(raw)
    assert exp.speed.enabled is False
    trial = trial_config(exp, standins("bart"), tiny_data)
    settings, speed_plan, placement = recipe.decide_trial_settings(trial)
    t = exp.training
    assert speed_plan is None and recipe.speed_record(speed_plan) == {"eff_speed_enabled": False}
    assert (settings.train_batch_size, settings.gradient_accumulation_steps) == (
        t.per_device_train_batch_size, t.gradient_accumulation_steps)
    assert recipe.loss_function(None).keywords["cross_entropy"] is recipe.plain_cross_entropy
    data = recipe.TrialData.load(trial)
    record = TrialRecord(exp.name, exp.model_dump(), trial.model.model_path, settings, [], placement, started=0.0)
    trainer = recipe.build_trainer(trial, settings, speed_plan, data, str(tmp_path), record, report=lambda m, c: None)
    assert isinstance(trainer, family_of(exp.model.architecture).trainer_class())  # Seq2SeqTrainer's evaluate
    assert trainer.fast_evaluate is None and not trainer.args.tf32
    assert record.trainer["eff_speed_attn_implementation"] and record.trainer["eff_speed_optimizer"]


def _trial(configs, standins, tiny_data, on: bool):
    from tests import trial_hooks

    exp = smoke_exp(configs, BART_CONFIG, training={"num_train_epochs": 1, "per_device_train_batch_size": 4,
                                                     "per_device_eval_batch_size": 2, "gradient_accumulation_steps": 2,
                                                     "early_stopping_patience": None, "logging_steps": 1},
                    tokenizer={"encoder_max_len": 64, "decoder_max_len": 24},
                    generation={"max_length": 20, "min_length": 1, "num_beams": 2},
                    speed={"enabled": on})
    trial_hooks.PREDICTIONS.clear()
    reports = []
    run_trial(trial_config(exp, standins("bart"), tiny_data, callbacks=[trial_hooks.CAPTURE_PREDICTIONS]),
              lambda m, c: reports.append(m))
    return reports[-1], trial_hooks.PREDICTIONS[-1]


def _strip(rows, pad):
    """Generated ids without padding (the plain path pads batches to different widths)."""
    return [[t for t in r if t not in (pad, -100)] for r in rows]


@pytest.mark.slow  # a few trainings or CLI runs: ~10 s
def test_fast_evaluation_gives_the_plain_evaluations_results(configs, standins, tiny_data):
    """A 4-bit BART trained one epoch with 2-step accumulation, evaluated the plain way and the fast way (merged
    copy, length-sorted batches of another size): the same predictions in file order, the same scores and loss."""
    plain, plain_preds = _trial(configs, standins, tiny_data, on=False)
    fast, fast_preds = _trial(configs, standins, tiny_data, on=True)
    assert plain["eff_speed_enabled"] is False and fast["eff_speed_enabled"] is True
    assert fast["eff_speed_eval_merged"].startswith("yes"), fast["eff_speed_eval_merged"]
    from transformers import AutoTokenizer

    pad = AutoTokenizer.from_pretrained(standins("bart")).pad_token_id  # 3, as in KoBART's vocabulary (</s> is 1)
    assert _strip(fast_preds, pad) == _strip(plain_preds, pad)
    for key in ("competition_score", "rouge1", "rouge2", "rougeL"):
        assert fast[key] == pytest.approx(plain[key], abs=1e-9), key
    assert math.isfinite(plain["eval_loss"])
    assert fast["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-5)
    assert fast["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-6)  # no GPU: training itself unchanged


@pytest.mark.parametrize("n", [2, 3, 4])
def test_tensor_no_repeat_ngram_bans_what_transformers_bans(n):
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    gen = torch.Generator().manual_seed(n)
    for length in (1, n - 1, n, 9, 30):
        ids = torch.randint(0, 5, (12, length), generator=gen)  # a small vocabulary: many repeats
        scores = torch.randn(12, 7, generator=gen)
        got = generation.no_repeat_ngram_processor(n)(ids, scores.clone())
        want = scores.clone()
        for row in range(12):  # the definition: the token that would complete an n-gram seen before is banned
            seq = ids[row].tolist()
            tail = seq[len(seq) - n + 1:] if n > 1 else []
            for j in range(len(seq) - n + 1):
                if len(seq) >= n and seq[j:j + n - 1] == tail:
                    want[row, seq[j + n - 1]] = -float("inf")
        assert torch.equal(got, want), (n, length)
        assert torch.equal(got, NoRepeatNGramLogitsProcessor(n)(ids, scores.clone()))


def test_a_packed_trials_tighter_memory_cap_is_kept(configs, monkeypatch):
    p = speed.decide(smoke_exp(configs, BART_CONFIG), (8, 3), cuda=True, packed_cap_gib=9.5)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda *a: calls.append(a))
    speed.apply_memory_cap(p)
    assert p.memory_gib == 9.5 and not calls and "packed" in p.as_metrics()["eff_speed_notes"]
    looser = speed.decide(smoke_exp(configs, BART_CONFIG), (8, 3), cuda=True, packed_cap_gib=40.0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {"total_memory": 80 * 2**30}))
    speed.apply_memory_cap(looser)  # speed's own 20 GiB cap is the tighter one: set here
    assert looser.memory_gib == 20.0 and calls == [(20 / 80, 0)]


def test_the_merged_copy_is_built_only_where_it_fits_beside_the_training_model(monkeypatch):
    """The fast evaluation's bf16 copy of a 10.7B model (~20 GiB) does not fit a 24 GB card beside its 4-bit training
    model (~6 GiB held): generation then runs from the training model, and says why; a 1.5B copy fits."""
    import types

    import torch

    from trainables.trial.speed.evaluate import copy_does_not_fit

    def model(billions: float, four_bit: bool):
        cuda = torch.device("cuda", 0)
        stored = int(billions * 1e9 / (2 if four_bit else 1))
        param = types.SimpleNamespace(device=cuda, numel=lambda: stored)
        if four_bit:
            param = type("Params4bit", (), {"device": cuda, "numel": lambda self: stored})()
        return types.SimpleNamespace(parameters=lambda: iter([param]))

    card = types.SimpleNamespace(total_memory=24 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: card)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 6 * 2**30)
    why = copy_does_not_fit(model(10.7, four_bit=True), None)
    assert why and "does not fit" in why and "19.9 GiB" in why and "under 24.0 GiB" in why, why
    assert copy_does_not_fit(model(1.5, four_bit=True), None) is None
    assert copy_does_not_fit(model(1.5, four_bit=True), 8.0) is not None  # a packed trial's cap counts
    cpu = types.SimpleNamespace(parameters=lambda: iter([torch.nn.Parameter(torch.zeros(2))]))
    assert copy_does_not_fit(cpu, 0.001) is None  # the CPU (smoke): always tried


def test_the_dev_loss_batch_shrinks_to_what_fits_under_the_cap(monkeypatch):
    """A 150k-vocabulary causal LM's dev loss over 1,184-token rows: 16 rows at once overran a 20 GiB cap beside a
    1.5B model (H200, 2026-12-02), and the OOM back-off then retried training; the batch is now what fits in the
    memory left under the cap. The per-row loss sums do not depend on it."""
    import types

    import torch

    from trainables.trial.speed.evaluate import loss_rows_that_fit

    cuda = torch.device("cuda", 0)
    head = types.SimpleNamespace(weight=types.SimpleNamespace(shape=(151936, 1536)))
    model = types.SimpleNamespace(parameters=lambda: iter([types.SimpleNamespace(device=cuda)]),
                                  get_output_embeddings=lambda: head)
    rows = [{"labels": [0] * 1184}] * 32
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (120 * 2**30, 139 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 4 * 2**30)
    row_gib = 1184 * 151936 * 10 / 2**30  # logits in bf16, an fp32 copy, the log-softmax: ~1.7 GiB a row
    assert loss_rows_that_fit(model, rows, 16, 20.0) == int(16 * 0.6 // row_gib) < 16  # 16 GiB left under the cap
    assert loss_rows_that_fit(model, rows, 16, None) == 16  # the whole H200: the usual batch
    assert loss_rows_that_fit(model, rows, 16, 4.5) == 1  # never below one row
    cpu = types.SimpleNamespace(parameters=lambda: iter([torch.nn.Parameter(torch.zeros(2))]))
    assert loss_rows_that_fit(cpu, rows, 16, 0.001) == 16  # the CPU: the configured batch
