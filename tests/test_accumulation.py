"""Gradient accumulation is exact: the same effective batch split two ways (8 x 1, 4 x 2, 2 x 4) gives the same
first-step gradient and the same logged training loss, for every family, with and without LoRA and 4-bit.

Through the trial's own Trainer (`seq2seq.build_trainer`, what `run_trial` builds), on the tiny stand-ins, dropout
off, 8 training rows: one optimizer step, the same 8 dialogues whatever the split (their micro-batches hold
different numbers of label tokens). Measured before the fix (transformers 5 skipping the division by the
accumulation steps for these models): the gradient grew with the split, 1 : 2 : 4 for 8 x 1, 4 x 2, 2 x 4
(relative difference of 8 x 1 and 4 x 2: 0.99 for every family and variant), and the logged loss at 2 x 4 was 30.41
where the model's own per-token loss on the whole batch is 7.60. After: <= 1e-4 everywhere, loss equal."""

from __future__ import annotations

import pytest

from tests.conftest import set_fields, write_sample
from tests.test_models import (  # noqa: F401
    BART_CONFIG, MT5_CONFIG, T5_CONFIG, build, configs, smoke_exp, standins, trial_config,
)
from tests.trial_hooks import FIRST_STEP as SEEN
from tests.trial_hooks import StopAfterFirstStep, no_dropout

MT5_TIED_CONFIG = "01_mt5_xlsum_ultimate"  # LoRA on lm_head and the embeddings too
FAMILIES = {"t5": T5_CONFIG, "mt5": MT5_CONFIG, "bart": BART_CONFIG}
VARIANTS = {"full": {"use_qlora": False, "load_in_4bit": False}, "lora": {"use_qlora": True, "load_in_4bit": False},
            "qlora": {"use_qlora": True, "load_in_4bit": True}}


@pytest.fixture(scope="module")
def eight_rows(tmp_path_factory):
    d = tmp_path_factory.mktemp("eight-rows")
    write_sample(d, train=8, dev=2)
    return d


def first_step(exp, model_path: str, data_dir, batch: int, accumulation: int, tmp_path):
    """(gradient of every trainable parameter, logged loss, the meter's unrounded loss) of the first optimizer
    step of the trial's Trainer (`seq2seq.build_trainer`, as `run_trial` builds it) at `batch` x `accumulation`."""
    from trainables.trial.callbacks import TrialRecord
    from trainables.trial.recipe import TrialData, build_trainer, decide_trial_settings

    exp = exp.model_copy(deep=True)
    set_fields(exp.training, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation)
    trial = trial_config(exp, model_path, data_dir, callbacks=[{"factory": "tests.trial_hooks:CaptureFirstStep"}])
    settings, speed_plan, placement = decide_trial_settings(trial)
    data = TrialData.load(trial)  # framed as run_trial frames inputs and labels
    record = TrialRecord(exp.name, exp.model_dump(), model_path, settings, [], placement, started=0.0)
    SEEN.clear()
    trainer = build_trainer(trial, settings, speed_plan, data, str(tmp_path), record, report=lambda m, c: None)
    with pytest.raises(StopAfterFirstStep):
        trainer.train()
    return SEEN["grad"], SEEN["loss"], float(SEEN["meter"].total)


def relative_difference(a: dict, b: dict) -> float:
    import torch

    assert a.keys() == b.keys() and a
    diff = torch.sqrt(sum(((a[k] - b[k]).double() ** 2).sum() for k in a))
    norm = torch.sqrt(sum((a[k].double() ** 2).sum() for k in a))
    return float(diff / norm)


def accumulation_exp(configs, name: str, variant: str):  # noqa: F811
    return smoke_exp(
        configs, name,
        training={"num_train_epochs": 1, "logging_steps": 1, "eval_steps": None, "early_stopping_patience": None,
                  "max_grad_norm": 1e9, "warmup_ratio": 0.0},  # no clipping: it would hide a scaled gradient
        tokenizer={"encoder_max_len": 48, "decoder_max_len": 24},
        generation={"max_length": 8, "min_length": 1, "num_beams": 1},
        qlora={**VARIANTS[variant], "lora_dropout": 0.0},
    )


@pytest.mark.slow  # 9 cases, two short trainings each: minutes on a loaded 2-core machine
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("arch", list(FAMILIES))
def test_same_effective_batch_same_first_step(configs, standins, eight_rows, tmp_path, arch, variant):  # noqa: F811
    exp = accumulation_exp(configs, FAMILIES[arch], variant)
    path = standins(arch)
    grad_a, logged_a, mean_a = first_step(exp, path, eight_rows, 8, 1, tmp_path / "a")
    grad_b, logged_b, mean_b = first_step(exp, path, eight_rows, 4, 2, tmp_path / "b")
    assert relative_difference(grad_a, grad_b) <= 1e-4, (arch, variant, relative_difference(grad_a, grad_b))
    assert mean_b == pytest.approx(mean_a, rel=1e-5)
    assert logged_b == pytest.approx(logged_a, abs=1e-4)  # the Trainer rounds its logs to 4 decimals


@pytest.mark.slow
def test_oom_back_off_keeps_the_gradient(configs, standins, eight_rows, tmp_path):  # noqa: F811
    """halve_batch's 8 x 1 -> 4 x 2 -> 2 x 4 -> 1 x 8: one gradient, on mT5 with LoRA on the tied head and
    embeddings in 4 bits (the config that adapts the most)."""
    from trainables.trial.backoff import halve_batch

    exp = accumulation_exp(configs, MT5_TIED_CONFIG, "qlora")
    path = standins("mt5")
    reference, _, loss = first_step(exp, path, eight_rows, 8, 1, tmp_path / "ref")
    batch, accumulation = 8, 1
    while batch > 1:
        batch, accumulation = halve_batch(batch, accumulation)
        grad, _, mean = first_step(exp, path, eight_rows, batch, accumulation, tmp_path / f"{batch}")
        assert relative_difference(reference, grad) <= 1e-4, (batch, accumulation, relative_difference(reference, grad))
        assert mean == pytest.approx(loss, rel=1e-5)


def test_logged_loss_is_the_mean_per_token_loss(configs, standins, eight_rows, tmp_path):  # noqa: F811
    """What the trial logs is the model's own loss on the whole batch (mean over its label tokens), as the
    seed's runs logged it: not k times it, nor a mean of micro-batch means."""
    import torch
    from transformers import DataCollatorForSeq2Seq, set_seed

    from trainables.data import read_split

    exp = accumulation_exp(configs, BART_CONFIG, "lora")
    path = standins("bart")
    _, logged, mean = first_step(exp, path, eight_rows, 2, 4, tmp_path / "run")
    set_seed(exp.training.seed)
    model, tokenizer, _ = build(exp, path)
    no_dropout(model)
    from trainables.trial.families.seq2seq.framing import probe_framing, tokenize_split

    framing = probe_framing(tokenizer, path)
    framing.apply_to(model)
    tok = exp.tokenizer
    rows = tokenize_split(read_split(eight_rows, "train").frame, tokenizer, tok.input_prefix, tok.encoder_max_len,
                          tok.decoder_max_len, framing)
    batch = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)([rows[i] for i in range(len(rows))])
    with torch.no_grad():
        whole = float(model(**batch).loss)
    assert mean == pytest.approx(whole, rel=1e-5)
    assert logged == pytest.approx(whole, abs=1e-4)
