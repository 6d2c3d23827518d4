"""BOS/EOS framing with tokenizers the project did not build (tests/foreign_checkpoints.py): KoBART's (adds
nothing), mT5's (appends </s>, pad 0, no bos, spare embedding rows) and one that adds both; the sequences that
reach the Trainer, the generation settings, decoding, `check`, the stand-ins, and (slow) trained models that
stop before max_length and added-token rows that train inside mT5's spare rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli, save_trial_checkpoint, set_fields, trained_like, write_sample
from tests.foreign_checkpoints import LAYOUTS, build_foreign
from trainables.config import DEFAULT_SPECIAL_TOKENS, ExperimentConfig, TrialConfig, apply_mode, load_search_space
from trainables.data import read_split
from trainables.trial.families.common import grow_vocabulary, load_tokenizer
from trainables.trial.families.seq2seq.framing import probe_framing, tokenize_split

CONFIG_FOR = {"kobart": "01_baseline_kobart_rtx3090", "mt5": "01_mt5_xlsum_optimized_v2", "both": "03_high_learning_rate_rtx3090"}
EXPECTED = {  # (what the tokenizer adds by itself, inputs begin with bos, labels begin with bos)
    "kobart": ("nothing", True, False),
    "mt5": ("… </s>", False, False),
    "both": ("<s> … </s>", True, True),
}


@pytest.fixture(scope="session")
def foreign(tmp_path_factory):
    """The three foreign model folders, built once."""
    base = tmp_path_factory.mktemp("foreign")
    return {layout: str(build_foreign(layout, base / layout)) for layout in LAYOUTS}


@pytest.fixture(scope="session")
def configs() -> dict:
    return {c.name: c for c in load_search_space(ROOT / "search_spaces")}


def loaded(foreign, layout):
    from transformers import AutoModelForSeq2SeqLM

    tokenizer = load_tokenizer(foreign[layout], DEFAULT_SPECIAL_TOKENS)
    model = AutoModelForSeq2SeqLM.from_pretrained(foreign[layout])
    grow_vocabulary(model, tokenizer, seed=0)
    return tokenizer, model, probe_framing(tokenizer, foreign[layout])


def unpadded(row) -> list[int]:
    return [int(i) for i in row if i != -100]


# ---------------------------------------------------------------------------------------------------
# What reaches the Trainer


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("decoder_max_len", [8, 200])  # cut summaries, and whole ones
def test_sequences_reaching_the_trainer_are_framed(foreign, layout, decoder_max_len):
    from transformers import DataCollatorForSeq2Seq

    tokenizer, model, framing = loaded(foreign, layout)
    adds, input_bos, label_bos = EXPECTED[layout]
    assert framing.tokenizer_adds == adds and framing.label_bos is label_bos
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    frame = read_split(ROOT / "data", "train").frame.head(8)
    data = tokenize_split(frame, tokenizer, "요약: ", 48, decoder_max_len, framing)
    # The collator the trial uses: pads, and builds decoder_input_ids from the labels with the model's start token.
    batch = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)([data[i] for i in range(8)])
    assert "token_type_ids" not in batch
    for inputs, mask, labels, decoder_inputs in zip(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                                    batch["decoder_input_ids"]):
        ids = inputs[mask.bool()].tolist()
        assert len(ids) <= 48 and ids[-1] == eos and ids.count(eos) == 1
        assert (ids[0] == bos) is input_bos
        assert tokenizer.decode(ids, skip_special_tokens=True).startswith("요약:")
        target = unpadded(labels)
        assert len(target) <= decoder_max_len
        assert target[-1] == eos and target.count(eos) == 1, target  # exactly one EOS, at the end, even when cut
        assert (target[0] == bos) is label_bos and pad not in target
        assert decoder_inputs[0] == model.config.decoder_start_token_id
        assert decoder_inputs[1:len(target)].tolist() == target[:-1]  # teacher forcing: labels shifted right
    lengths = [len(unpadded(r)) for r in batch["labels"]]
    if decoder_max_len == 8:
        assert max(lengths) == 8  # the long summaries were cut, then closed


def test_inputs_keep_their_eos_when_cut(foreign):
    tokenizer, _, framing = loaded(foreign, "kobart")
    long = ["#Person1#: " + "안녕하세요 " * 200]
    (ids,) = framing.encode_inputs(tokenizer, long, 32)
    assert len(ids) == 32 and ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="no room"):
        framing.encode_labels(tokenizer, long, 1)


# ---------------------------------------------------------------------------------------------------
# Generation settings and decoding


@pytest.mark.parametrize("layout", LAYOUTS)
def test_generation_settings_match_the_labels(foreign, layout):
    tokenizer, model, framing = loaded(foreign, layout)
    framing.apply_to(model)
    g = model.generation_config
    assert g.eos_token_id == tokenizer.eos_token_id and g.pad_token_id == tokenizer.pad_token_id
    assert g.decoder_start_token_id == model.config.decoder_start_token_id
    if model.config.model_type == "bart":
        assert g.forced_eos_token_id == tokenizer.eos_token_id  # never BART's default 2 where EOS is 1
    else:
        assert g.forced_eos_token_id is None
    assert g.forced_bos_token_id == (tokenizer.bos_token_id if EXPECTED[layout][2] else None)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_decoding_strips_the_frame_and_stops_at_eos(foreign, layout):
    import numpy as np

    from trainables.trial.families.seq2seq.generate import generate_summaries

    tokenizer, model, framing = loaded(foreign, layout)
    text = "#Person1#이 #Person2#에게 치과 예약을 한다."
    body = tokenizer(text, add_special_tokens=False)["input_ids"]
    start = model.config.decoder_start_token_id
    head = [start] + ([tokenizer.bos_token_id] if framing.label_bos else [])
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [head + body + [eos, pad, pad, pad], head + body[:3] + [eos] + body[3:6] + [eos]]
    width = max(map(len, rows))
    rows = np.array([r + [pad] * (width - len(r)) for r in rows])
    with_ignored = np.where(rows == pad, -100, rows)  # the Trainer pads predictions with -100
    for given in (rows, with_ignored):
        first, cut = framing.decode(tokenizer, given)
        assert first == tokenizer.decode(body, skip_special_tokens=True).strip()
        assert "#Person1#" in first and "#Person2#" in first  # the speaker tags survive
        assert cut == tokenizer.decode(body[:3], skip_special_tokens=True).strip()  # nothing after the first EOS
    # A random model's summaries, through the predict path's generate_summaries: no special token in the text.
    exp, _ = apply_mode(load_search_space(ROOT / "search_spaces", [CONFIG_FOR[layout]])[0], "smoke")
    set_fields(exp.generation, max_length=12, min_length=1, num_beams=2)
    dev = read_split(ROOT / "data", "dev").frame.head(3)
    summaries = generate_summaries(model, tokenizer, dev["dialogue"].tolist(), exp)
    assert len(summaries) == 3
    for s in summaries:
        assert not any(t in s for t in ("<s>", "</s>", "<pad>")), s


# ---------------------------------------------------------------------------------------------------
# `check` on a local checkpoint, and the stand-ins


@pytest.mark.slow  # a few trainings or CLI runs: ~10 s
def test_check_reports_the_framing_of_a_local_checkpoint(foreign, tmp_path):
    import yaml

    for layout in ("kobart", "mt5"):
        cfg = yaml.safe_load((ROOT / "search_spaces" / f"{CONFIG_FOR[layout]}.yaml").read_text(encoding="utf-8"))
        cfg["model"]["checkpoint"] = foreign[layout]
        (tmp_path / f"{CONFIG_FOR[layout]}.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    proc = run_cli("check", "--mode", "full", "--search-space", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    kobart = out[out.index(CONFIG_FOR["kobart"]):].splitlines()[1]
    assert "tokenizer adds nothing" in kobart and "inputs <s> … </s>, labels … </s>" in kobart
    mt5 = out[out.index(CONFIG_FOR["mt5"]):].splitlines()[1]
    assert "tokenizer adds … </s>" in mt5 and "decoder starts at 0" in mt5
    assert "11 added tokens" in mt5 and "vocabulary grows" not in mt5  # they fit in the spare rows


@pytest.mark.parametrize("arch,adds", [("bart", "nothing"), ("mt5", "… </s>"), ("t5", "… </s>")])
def test_standins_behave_like_the_real_tokenizers(standin_cache, arch, adds):
    from transformers import AutoModelForSeq2SeqLM

    from trainables.data import training_texts
    from trainables.trial.families.seq2seq.standin import build_standin
    from trainables.trial.families.common import project_token_ids

    path = str(build_standin(arch, training_texts(ROOT / "data"), standin_cache, warm_start=False))
    tokenizer = load_tokenizer(path, DEFAULT_SPECIAL_TOKENS)
    model = AutoModelForSeq2SeqLM.from_pretrained(path)
    framing = probe_framing(tokenizer, model.config)
    assert framing.tokenizer_adds == adds
    rows = model.get_input_embeddings().num_embeddings
    new = project_token_ids(tokenizer, DEFAULT_SPECIAL_TOKENS)
    assert len(new) == len(DEFAULT_SPECIAL_TOKENS)
    if arch == "bart":  # KoBART's ids
        assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 3)
        assert model.config.decoder_start_token_id == 1 and model.config.forced_eos_token_id == 1
    else:  # T5/mT5: their own output head, like the real checkpoints
        assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    if arch == "mt5":  # padded like the real one: the added tokens get ids inside the existing rows
        assert rows % 128 == 0 and max(new) < rows


def test_an_untied_head_stays_untied_when_the_vocabulary_grows(foreign):
    import torch
    from transformers import AutoModelForSeq2SeqLM


    model = AutoModelForSeq2SeqLM.from_pretrained(foreign["mt5"])
    head = model.get_output_embeddings().weight.detach().clone()
    tokenizer = load_tokenizer(foreign["mt5"], DEFAULT_SPECIAL_TOKENS + [f"#Extra{i}#" for i in range(100)])
    old = grow_vocabulary(model, tokenizer, seed=0)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) > old
    out = model.get_output_embeddings().weight
    assert out is not model.get_input_embeddings().weight
    assert torch.equal(out[:old].detach(), head)  # the checkpoint's own head, not the embeddings


def test_added_rows_of_an_untied_head_are_saved_reloaded_and_exported(foreign, configs, tmp_path):
    """mT5's spare rows, LoRA on attention and feed-forward only (configs 1 and 2): the added tokens' rows of the
    input embeddings AND of the untied output head are trainable, saved in the adapter, reloaded by predict and
    merged by export. transformers 5 says tie_word_embeddings=True on every (m)T5 config, and peft, trusting the
    flag, used to skip lm_head as "tied": its rows never trained, while eff_token_rows said they did."""

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSeq2SeqLM

    from trainables.results.export import merged_model
    from trainables.trial.families.common import project_token_ids
    from trainables.trial.families.seq2seq.model import load_model
    from trainables.trial.models import Environment, decide_settings
    from trainables.results.predict import load_for_inference

    exp = small_exp(configs, CONFIG_FOR["mt5"])
    assert not {"embed_tokens", "shared", "lm_head"} & set(exp.qlora.target_modules)
    env = Environment(cuda=False, bf16_supported=False, device_name="cpu", unsloth_installed=False,
                      bitsandbytes_installed=True)
    settings = decide_settings(exp, env, "foreign")
    tokenizer = load_tokenizer(foreign["mt5"], exp.tokenizer.special_tokens)
    new = project_token_ids(tokenizer, exp.tokenizer.special_tokens)
    base = AutoModelForSeq2SeqLM.from_pretrained(foreign["mt5"])
    rows = base.get_input_embeddings().num_embeddings
    assert new and max(new) < rows  # inside the spare rows: no resize
    torch.manual_seed(0)
    model, loaded = load_model(exp, foreign["mt5"], tokenizer, settings)
    assert "rows trained in embed_tokens+lm_head" in loaded.token_rows and "untrained" not in loaded.token_rows
    trained_like(model)
    checkpoint = tmp_path / "checkpoint"
    meta = save_trial_checkpoint(model, tokenizer, checkpoint, exp, foreign["mt5"], settings)
    saved = load_file(checkpoint / "adapter_model.safetensors")
    assert any("lm_head.token_adapter" in k for k in saved), sorted(k for k in saved if "lora" not in k)

    predicted, _ = load_for_inference(checkpoint, meta)  # predict's rebuild, merged here to read the rows
    merged, _ = merged_model(checkpoint, meta, "fp32")  # export's
    merged.save_pretrained(tmp_path / "merged")
    exported = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged")
    old = sorted(set(range(rows)) - set(new))
    for label, trained in (("predict", predicted.merge_and_unload()), ("export", exported)):
        for name, get in (("input", lambda m: m.get_encoder().embed_tokens.weight),
                          ("output", lambda m: m.get_output_embeddings().weight)):
            before, after = get(base).detach(), get(trained).detach()
            assert after.shape[0] == rows
            changed = (after[new] - before[new]).abs().amax(dim=1)
            assert bool((changed > 0).all()), (label, name, changed)  # every added token's row trained
            assert torch.equal(after[old], before[old]), (label, name)  # and only those rows


# ---------------------------------------------------------------------------------------------------
# Training through run_trial (slow): models learn to stop, added rows train inside spare rows


def trial(exp: ExperimentConfig, model_path: str, data_dir: Path, keep: Path) -> dict:
    """Run one trial without Ray; the last reported checkpoint is copied to `keep`. Returns the final record."""
    from trainables.trial.recipe import run_trial

    def report(metrics, checkpoint):
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(checkpoint, keep)
        reports.append(metrics)

    reports: list[dict] = []
    config = TrialConfig.from_ray({"experiment": exp.model_dump(), "run": {
        "models": {exp.model.checkpoint: {"model_path": model_path, "model_source": "foreign"}},
        "data_dir": str(data_dir), "mode": "smoke", "torch_threads": 1,
        "environment": {"cuda": False, "bf16_supported": False, "device_name": "cpu", "unsloth_installed": False,
                        "bitsandbytes_installed": True},
    }})
    run_trial(config, report)
    assert reports, "no evaluation was reported"
    return reports[-1]


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """160 train rows and 8 dev rows of the shipped sample."""
    d = tmp_path_factory.mktemp("framing-data")
    write_sample(d, train=160, dev=8)
    return d


def small_exp(configs, name: str, **qlora) -> ExperimentConfig:
    exp, _ = apply_mode(configs[name], "smoke")
    set_fields(exp.training, num_train_epochs=2, per_device_train_batch_size=8, per_device_eval_batch_size=8,
                           gradient_accumulation_steps=2, logging_steps=5, early_stopping_patience=None,
                           eval_steps=None, learning_rate=3e-3)
    set_fields(exp.tokenizer, encoder_max_len=64, decoder_max_len=16)
    set_fields(exp.generation, max_length=32, min_length=1, num_beams=1)
    set_fields(exp.qlora, load_in_4bit=False, **qlora)
    return exp


# What the tiny models learn here, measured 2026-11-26 (deterministic: the mT5 layout's Unigram tokenizer is
# canonical now, families/seq2seq/standin.canonical_unigram; before, its ids changed on every build, and so did the trained model:
# that was the "6 of 8 in 2 of 3 runs" flakiness):
# - p(EOS) where each dev summary ends, teacher-forced: KoBART 0.88-0.95 (mean 0.92), "both" 0.91-0.95 (0.94), mT5
#   0.03-0.82 (mean 0.39); inside the summaries 0.012, 0.007, 0.043. Labels without EOS would give ~0 (never a
#   target); the old recipe below gave 0.004 at the end and inside alike.
# - greedy decoding stops before max_length: BART layouts 8 of 8; mT5 4 of 8 (2 and 3 epochs alike): the other
#   rows fall into repetition loops ("이번 주 금요일 이번 주 금요일 ..."), which the mT5 config's generation settings
#   (no no_repeat_ngram_size) don't break. That is the tiny model's decoding, not the labels: the teacher-forced
#   check above is the claim, this bound (3 of 8 for mT5) only that generation does use what was learned.
# - The "both" layout (labels <s> … </s>, decoder start </s>, forced <s>: facebook/bart's own convention) had
#   decoded to empty text: with the old recipe (20 steps at 3e-3) NO layout learned (eval loss 6.0, p(EOS) 0.004
#   everywhere, one output for every input); the <s> runs were that model's most frequent early label token, and
#   KoBART's "8 of 8 stop" was chance. 80 steps at 1e-2: eval loss 3.1-3.2 (mT5 2.3), one <s>, text, then EOS.
MIN_STOPS = {"kobart": 6, "both": 6, "mt5": 3}


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_trained_model_stops_before_max_length(foreign, configs, sample_data, tmp_path, layout):
    """Full fine-tuning of the tiny random model, 80 optimizer steps (LoRA on a random base barely moves): labels
    cut at 16 tokens end with EOS, so the model learns to close a summary and its predictions stop before
    max_length (32); without EOS in its labels nothing would teach it to."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    from trainables.results.predict import load_for_inference, read_meta

    exp = small_exp(configs, CONFIG_FOR[layout], use_qlora=False)
    # 2 epochs of 160 rows, 4 a step in 2 micro-batches: 80 steps, enough for every layout to learn (see above)
    set_fields(exp.training, per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-2)
    final = trial(exp, foreign[layout], sample_data, tmp_path / "ckpt")
    assert final["eff_framing"].startswith(("bart:" if layout != "mt5" else "t5:"))
    model, tokenizer = load_for_inference(tmp_path / "ckpt", read_meta(tmp_path / "ckpt"))  # predict's path
    model.eval()
    framing = probe_framing(tokenizer, model.config)
    framing.apply_to(model)
    dev = read_split(sample_data, "dev").frame

    # What the labels taught: after each dev summary (teacher-forced), EOS is likely; inside it, it is not.
    data = tokenize_split(dev, tokenizer, exp.tokenizer.input_prefix, 64, 16, framing)
    batch = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)([data[i] for i in range(len(dev))])
    with torch.no_grad():
        p_eos = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      decoder_input_ids=batch["decoder_input_ids"]).logits.softmax(-1)[..., framing.eos_id]
    ends = [int((labels != -100).sum()) - 1 for labels in batch["labels"]]
    at_end = torch.stack([p[e] for p, e in zip(p_eos, ends)])
    inside = torch.cat([p[:e] for p, e in zip(p_eos, ends)])
    assert at_end.mean() > 0.25 and at_end.mean() > 3 * inside.mean(), (at_end, inside.mean())

    rows = framing.encode_inputs(tokenizer, dev["dialogue"].tolist(), 64)
    width = max(map(len, rows))
    x = torch.tensor([r + [framing.pad_id] * (width - len(r)) for r in rows])
    max_length = exp.generation.max_length
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=(x != framing.pad_id).long(), max_length=max_length,
                             num_beams=1).tolist()
    # Where EOS first comes, after the start token; forced_eos would put one at max_length - 1 anyway.
    stops = [r.index(framing.eos_id, 1) if framing.eos_id in r[1:] else max_length for r in out]
    assert sum(s < max_length - 1 for s in stops) >= MIN_STOPS[layout], stops
    if framing.label_bos:  # one BOS (forced) after the start token, then text: no runs of <s>
        assert all(r[1] == framing.bos_id and r[2] != framing.bos_id for r in out), out
    summaries = framing.decode(tokenizer, out)
    assert all(s.strip() for s in summaries) and not any("</s>" in s or "<pad>" in s for s in summaries), (out, summaries)


@pytest.mark.slow
def test_added_token_rows_train_inside_padded_mt5_rows(foreign, configs, sample_data, tmp_path):
    """mT5's spare rows: the added tokens get ids inside the existing rows, no resize happens, and LoRA on
    attention and feed-forward alone (configs 1 and 2) could not change them; their rows must still train."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from trainables.trial.families.common import project_token_ids
    from trainables.results.predict import load_for_inference, read_meta

    exp = small_exp(configs, CONFIG_FOR["mt5"])
    exp.training.num_train_epochs = 1
    assert exp.qlora.use_qlora and not {"embed_tokens", "shared", "lm_head"} & set(exp.qlora.target_modules)
    base = AutoModelForSeq2SeqLM.from_pretrained(foreign["mt5"])
    tokenizer = load_tokenizer(foreign["mt5"], exp.tokenizer.special_tokens)
    new = project_token_ids(tokenizer, exp.tokenizer.special_tokens)
    rows = base.get_input_embeddings().num_embeddings
    assert new and max(new) < rows  # inside the spare rows: no resize

    final = trial(exp, foreign["mt5"], sample_data, tmp_path / "ckpt")
    assert f"{new[0]}-{new[-1]}" in final["eff_token_rows"] and "embed_tokens+lm_head" in final["eff_token_rows"]
    trained, _ = load_for_inference(tmp_path / "ckpt", read_meta(tmp_path / "ckpt"))
    trained = trained.merge_and_unload()
    old = sorted(set(range(rows)) - set(new))
    for name, get in (("input", lambda m: m.get_input_embeddings().weight), ("output", lambda m: m.get_output_embeddings().weight)):
        before, after = get(base).detach(), get(trained).detach()
        assert after.shape[0] == rows
        changed = (after[new] - before[new]).abs().amax(dim=1)
        assert bool((changed > 0).all()), (name, changed)  # every added token's row trained
        assert torch.equal(after[old], before[old]), name  # and only those rows
