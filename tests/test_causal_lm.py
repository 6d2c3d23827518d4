"""The decoder-only family (trainables/trial/families/causal_lm) on its tiny stand-ins: the tokenizers they copy, the
rows that reach the Trainer (prompt masked, the summary and exactly one EOS), truncation, left-padded batched
generation against one-by-one, the exported chat template, and the config's traps (one line, exit 2, before Ray).
The decoder-only smoke grid, resume, predict and export through it: tests/test_causal_lm_grid.py (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT
from trainables.config import ExperimentConfig, load_search_space
from trainables.trial.families import family_of

LLM = ROOT / "search_spaces" / "llm"
CONFIG_FOR = {"qwen2": "01_qwen2.5_1.5b_instruct_lora", "qwen3": "02_qwen3_4b_instruct_qlora",
              "llama": "03_solar_10.7b_instruct_qlora_winner"}


@pytest.fixture(scope="session")
def llm_configs() -> dict[str, ExperimentConfig]:
    return {c.name: c for c in load_search_space(LLM)}


@pytest.fixture(scope="session")
def cold_standins(standin_cache) -> dict[str, Path]:
    """The three stand-ins without their warm start (the code paths only; seconds to build)."""
    from trainables.data import training_texts

    texts = training_texts(ROOT / "data")
    return {arch: family_of(arch).build_standin(arch, texts, standin_cache, warm_start=False) for arch in CONFIG_FOR}


def config_for(llm_configs, arch: str, **sections) -> ExperimentConfig:
    """The shipped config of `arch`, its sections updated with `sections` ({"tokenizer": {...}}), re-validated."""
    raw = llm_configs[CONFIG_FOR[arch]].model_dump()
    for name, values in sections.items():
        raw[name] = values if values is None else {**(raw.get(name) or {}), **values}
    return ExperimentConfig.model_validate(raw)


def framed(cold_standins, exp):
    family = family_of(exp.model.architecture)
    tokenizer = family.load_tokenizer(str(cold_standins[exp.model.architecture]), exp)
    return family, tokenizer, family.framing(tokenizer, str(cold_standins[exp.model.architecture]), exp)


# ---------------------------------------------------------------------------------------------------
# The stand-ins


def test_standins_copy_the_real_tokenizers(cold_standins):
    """Qwen's: no BOS, EOS <|im_end|>, pad <|endoftext|> (not the EOS), a ChatML chat template; SOLAR's (llama):
    <s> before every text by itself, no pad token, no chat template. Both load through the library's own class."""
    from transformers import AutoTokenizer

    for arch in ("qwen2", "qwen3"):
        tok = AutoTokenizer.from_pretrained(cold_standins[arch])
        assert type(tok).__name__ == "Qwen2Tokenizer"
        assert (tok.bos_token, tok.eos_token, tok.pad_token) == (None, "<|im_end|>", "<|endoftext|>")
        assert "<|im_start|>" in tok.chat_template and tok.pad_token_id != tok.eos_token_id
    llama = AutoTokenizer.from_pretrained(cold_standins["llama"])
    assert type(llama).__name__ == "LlamaTokenizer" and llama.pad_token is None and not llama.chat_template
    assert llama("안녕")["input_ids"][0] == llama.bos_token_id
    assert llama.decode(llama("### User: 안녕", add_special_tokens=False)["input_ids"]) == "### User: 안녕"  # byte fallback


def test_standins_are_byte_identical_rebuilt(cold_standins, tmp_path):
    from trainables.data import training_texts
    from trainables.trial.families.causal_lm.standin import pretrain_on_text

    texts = training_texts(ROOT / "data")
    for arch in ("qwen3", "llama"):
        again = family_of(arch).build_standin(arch, texts, tmp_path, warm_start=False)
        files = sorted(p.name for p in cold_standins[arch].iterdir())
        assert files == sorted(p.name for p in again.iterdir())
        for name in files:
            assert (cold_standins[arch] / name).read_bytes() == (again / name).read_bytes(), (arch, name)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    states = []
    for _ in range(2):  # the warm start: the same steps give the same weights
        model = AutoModelForCausalLM.from_pretrained(cold_standins["qwen3"])
        pretrain_on_text(model, AutoTokenizer.from_pretrained(cold_standins["qwen3"]), texts[:64], seed=0, steps=3, batch=4)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


# ---------------------------------------------------------------------------------------------------
# What reaches the Trainer


def summary_and_prompt(batch, row: int) -> tuple[list[int], list[int]]:
    """(the labelled ids, the ids before them) of one collated row, padding left out."""
    ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
    labels = batch["labels"][row][: len(ids)].tolist()
    start = next(i for i, label in enumerate(labels) if label != -100)
    assert all(label == -100 for label in labels[:start]) and -100 not in labels[start:], labels
    assert labels[start:] == ids[start:]  # the labels are the very tokens the model reads next
    return labels[start:], ids[:start]


@pytest.mark.parametrize("arch", ["qwen3", "llama"])  # a chat template; no pad token and no chat template
def test_labels_reaching_the_trainer_are_the_summary_and_one_eos(cold_standins, llm_configs, arch):
    """The rows the Trainer's dataloader yields: the prompt masked (-100), then the summary and exactly one EOS (the
    chat turn's end for Qwen, </s> for SOLAR), right-padded with a pad token that is not the EOS; one BOS where the
    tokenizer puts one."""
    import pandas as pd

    exp = config_for(llm_configs, arch, tokenizer={"encoder_max_len": 4096, "decoder_max_len": 512})
    family, tokenizer, framing = framed(cold_standins, exp)
    frame = pd.read_csv(ROOT / "data" / "train.csv", dtype=str).head(8)
    data = family.tokenize(frame, tokenizer, exp, framing)
    batch = family.collator(tokenizer, None)([data[i] for i in range(8)])
    eos, pad = framing.eos_id, tokenizer.pad_token_id
    assert pad is not None and pad != eos and tokenizer.eos_token == {"qwen3": "<|im_end|>", "llama": "</s>"}[arch]
    assert (batch["input_ids"][batch["attention_mask"] == 0] == pad).all()
    for row, summary in enumerate(frame["summary"]):
        target, prompt = summary_and_prompt(batch, row)
        assert target[-1] == eos and target.count(eos) == 1, target
        assert tokenizer.decode(target[:-1]).strip() == summary  # the whole summary, speaker tags included
        text = tokenizer.decode(prompt)
        assert frame["dialogue"][row] in text and text.endswith(framing.tail) and summary not in text
        bos = tokenizer.bos_token_id
        assert prompt.count(bos) == (1 if arch == "llama" else 0) and (bos is None or prompt[0] == bos)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_truncation_cuts_the_dialogue_never_the_summary(cold_standins, llm_configs, arch):
    exp = config_for(llm_configs, arch, tokenizer={"encoder_max_len": 96, "decoder_max_len": 512})
    family, tokenizer, framing = framed(cold_standins, exp)
    dialogue, summary = "#Person1#: 안녕하세요, 무엇을 도와드릴까요? " * 40, "#Person2#는 내일 치과 진료를 예약한다."
    (ids,), (labels,) = framing.training_rows(tokenizer, [dialogue], [summary], 96, 512)
    start = labels.index(next(label for label in labels if label != -100))
    assert start <= 96 and len(ids) == start + len(labels[start:])
    assert tokenizer.decode(labels[start:-1]).strip() == summary and labels[-1] == framing.eos_id
    prompt = tokenizer.decode(ids[:start])
    assert prompt.endswith(framing.tail) and "#Person1#: 안녕하세요" in prompt and len(prompt) < len(dialogue)
    short = framing.encode_prompts(tokenizer, ["짧은 대화"], 96)[0]
    assert len(short) < 96 and tokenizer.decode(short).endswith("짧은 대화" + framing.tail)


def test_no_room_for_the_dialogue_is_one_clear_error(cold_standins, llm_configs, tmp_path, capsys):
    """A template whose fixed part fills tokenizer.encoder_max_len: the framing refuses it (a trial, before its model
    loads), and `check` on a local checkpoint says so in one line, exit 2."""
    import yaml

    from trainables.errors import UserError
    from tune_main7 import main

    exp = config_for(llm_configs, "qwen2", model={"checkpoint": str(cold_standins["qwen2"])}, tokenizer={"encoder_max_len": 8})
    with pytest.raises(UserError, match="leaves no room for the dialogue within tokenizer.encoder_max_len 8"):
        framed(cold_standins, exp)
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "tight.yaml").write_text(yaml.safe_dump(exp.model_dump(exclude_none=True), allow_unicode=True),
                                                  encoding="utf-8")
    assert main(["check", "--search-space", str(tmp_path / "grid"), "--mode", "full"]) == 2
    err = capsys.readouterr().err
    assert "leaves no room for the dialogue" in err and "Traceback" not in err


def test_a_template_that_writes_bos_gets_no_second_one(cold_standins, llm_configs):
    exp = config_for(llm_configs, "llama", prompt={"chat_template": (
        "{{ bos_token }}{% for m in messages %}{{ '### ' + m['role'] + ':\\n' + m['content'] + '\\n\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### assistant:\\n' }}{% endif %}")})
    _, tokenizer, framing = framed(cold_standins, exp)
    ids = framing.encode_prompts(tokenizer, ["#Person1#: 안녕"], 256)[0]
    assert framing.style == "custom chat template" and ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1 and not any("put before the prompt" in n for n in framing.notes)


def test_eos_is_the_chat_turns_end_not_a_constant(cold_standins, llm_configs, tmp_path):
    """A tokenizer whose EOS is not the token its chat template closes turns with (Llama-3.0's <|end_of_text|>
    against <|eot_id|>): the labels end with the turn's end, which generation then stops at."""
    import shutil

    folder = tmp_path / "qwen-eos"
    shutil.copytree(cold_standins["qwen3"], folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|endoftext|>"}))
    exp = config_for(llm_configs, "qwen3")
    family = family_of("qwen3")
    tokenizer = family.load_tokenizer(str(folder), exp)
    framing = family.framing(tokenizer, str(folder), exp)
    assert tokenizer.eos_token == "<|endoftext|>" and framing.eos_token == "<|im_end|>"
    assert any("ends an assistant turn with <|im_end|>" in n for n in framing.notes)
    assert tokenizer.pad_token_id not in (framing.eos_id, tokenizer.eos_token_id)  # it padded with its EOS: own pad


# ---------------------------------------------------------------------------------------------------
# Generation


@pytest.mark.parametrize("beams", [1, 2])
def test_left_padded_batched_generation_equals_one_by_one(cold_standins, llm_configs, beams):
    """Prompts of different lengths in one left-padded batch give what each gives alone, and only the new tokens
    come back: the attention mask hides the padding, the positions follow it."""
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM

    from trainables.trial.families.causal_lm.generate import generate_batch, generation_kwargs

    exp = config_for(llm_configs, "llama", generation={"num_beams": beams, "max_length": 12, "min_length": 0})
    family, tokenizer, framing = framed(cold_standins, exp)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(cold_standins["llama"])
    model.resize_token_embeddings(len(tokenizer))
    framing.apply_to(model)
    dialogues = pd.read_csv(ROOT / "data" / "dev.csv", dtype=str)["dialogue"].head(4).tolist()
    prompts = framing.encode_prompts(tokenizer, dialogues, 64 + 40 * len(dialogues))  # 4 different lengths
    prompts = [p[: 30 + 17 * i] for i, p in enumerate(prompts)]
    assert len({len(p) for p in prompts}) == 4
    kwargs = generation_kwargs(exp.generation)
    batched = generate_batch(model, prompts, framing.pad_id, **kwargs)
    alone = [generate_batch(model, [p], framing.pad_id, **kwargs)[0] for p in prompts]
    assert [framing.summary_ids(r) for r in batched] == [framing.summary_ids(r) for r in alone]
    assert all(0 < len(r) <= 12 for r in batched)


def test_generate_decodes_only_the_summary_in_dialogue_order(cold_standins, llm_configs):
    import torch
    from transformers import AutoModelForCausalLM

    exp = config_for(llm_configs, "qwen3", generation={"num_beams": 1, "max_length": 6, "min_length": 0})
    family, tokenizer, framing = framed(cold_standins, exp)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(cold_standins["qwen3"])
    dialogues = ["#Person1#: 안녕하세요. 오늘 날씨가 좋네요." * k for k in (1, 5, 2)]
    texts = family.generate(model, tokenizer, dialogues, exp, framing, batch_size=2)
    alone = [family.generate(model, tokenizer, [d], exp, framing, batch_size=1)[0] for d in dialogues]
    assert texts == alone and len(texts) == 3
    assert not any("<|im_start|>" in t or "assistant" in t for t in texts)  # the prompt is never decoded


# ---------------------------------------------------------------------------------------------------
# Export: the chat template renders the training prompt


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "llama"])
def test_exported_chat_template_renders_the_training_prompt(cold_standins, llm_configs, arch, tmp_path):
    """After prepare_export, plain apply_chat_template on a saved and reloaded tokenizer gives the ids training and
    predict build (system message, prefix and BOS included), for a base chat template and for the plain template."""
    from transformers import AutoTokenizer

    exp = config_for(llm_configs, arch, tokenizer={"input_prefix": "요약하세요:\n"})
    family, tokenizer, framing = framed(cold_standins, exp)
    family.prepare_export(None, tokenizer, framing, exp)
    tokenizer.save_pretrained(tmp_path)
    plain = AutoTokenizer.from_pretrained(tmp_path)
    dialogue = "#Person1#: 내일 오후 4시에 가능할까요?\n#Person2#: 네, 가능합니다."
    ids = plain.apply_chat_template([{"role": "user", "content": dialogue}], add_generation_prompt=True,
                                    return_dict=True)["input_ids"]
    assert list(ids) == framing.encode_prompts(tokenizer, [dialogue], 10**6)[0]
    assert "요약하세요:\n" + dialogue in plain.decode(ids)


# ---------------------------------------------------------------------------------------------------
# The config's traps: one line each, exit 2, before Ray starts


def test_shipped_llm_configs_check_clean(llm_configs):
    from trainables.config import static_problems

    assert set(CONFIG_FOR.values()) == set(llm_configs)
    for exp in llm_configs.values():
        assert static_problems(exp) == ([], []), exp.name
        assert family_of(exp.model.architecture).name == "causal_lm"


def test_the_default_grid_has_no_decoder_only_config():
    """search_spaces/llm/ is a grid of its own: the default grid (search_spaces/*.yaml) stays seq2seq."""
    default = load_search_space(ROOT / "search_spaces")
    assert default and not {c.name for c in default} & set(CONFIG_FOR.values())
    assert {family_of(c.model.architecture).name for c in default} == {"seq2seq"}


TRAPS = {  # (section changes, what the one line says)
    "seq2seq layer names": ({"qlora": {"target_modules": ["q", "v", "wi_0"]}}, "layers of seq2seq models"),
    "custom template without the dialogue": (
        {"prompt": {"chat_template": "{% for m in messages %}{{ m['role'] }}{% endfor %}"}},
        "does not put the user's message (the dialogue) in the prompt"),
    "broken custom template": ({"prompt": {"chat_template": "{% for m in messages %}"}}, "not a usable Jinja template"),
}


@pytest.mark.parametrize("trap", TRAPS)
def test_decoder_only_traps_are_refused(llm_configs, trap):
    from trainables.config import static_problems

    changes, message = TRAPS[trap]
    errors, _ = static_problems(config_for(llm_configs, "qwen3", **changes))
    assert len(errors) == 1 and message in errors[0], errors


def test_a_prompt_section_on_a_seq2seq_model_is_refused():
    from trainables.config import load_experiment, static_problems

    raw = load_experiment(ROOT / "search_spaces" / "01_baseline_kobart_rtx3090.yaml").model_dump()
    errors, _ = static_problems(ExperimentConfig.model_validate({**raw, "prompt": {"chat_template": False}}))
    assert len(errors) == 1 and "prompt: is for decoder-only models" in errors[0], errors


def test_a_template_without_the_dialogue_is_refused_by_the_schema(llm_configs):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"must contain \{dialogue\} exactly once"):
        config_for(llm_configs, "llama", prompt={"template": "### User:\n\n### Assistant:\n"})


def test_no_room_for_the_summary_within_the_context_is_refused(cold_standins, llm_configs):
    """A local checkpoint's config.json says how many positions there are: a full prompt plus the summary must fit."""
    from trainables.config import static_problems

    exp = config_for(llm_configs, "qwen3", model={"checkpoint": str(cold_standins["qwen3"])},  # 1024 positions
                     tokenizer={"encoder_max_len": 1000, "decoder_max_len": 100})
    errors, _ = static_problems(exp)
    assert len(errors) == 1 and "leaves no room for the summary" in errors[0] and "at most 864" in errors[0], errors


def test_check_refuses_a_trap_with_exit_2(llm_configs, tmp_path, capsys):
    import yaml

    from tune_main7 import main

    raw = llm_configs[CONFIG_FOR["llama"]].model_dump(exclude_none=True)
    raw["qlora"]["target_modules"] = ["q_proj", "out_proj"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    assert main(["check", "--search-space", str(tmp_path), "--mode", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "out_proj" in err and "layers of seq2seq models" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------
# Through run_trial (no Ray): the plain and the fast evaluation agree; the OOM back-off


@pytest.fixture(scope="session")
def tiny_llm_data(tmp_path_factory) -> Path:
    from tests.conftest import write_sample

    return write_sample(tmp_path_factory.mktemp("tiny-llm-data"), train=16, dev=4)


def small_trial(llm_configs, arch: str, **training) -> ExperimentConfig:
    from trainables.config import apply_mode

    exp, _ = apply_mode(llm_configs[CONFIG_FOR[arch]], "smoke")
    for key, value in {"num_train_epochs": 1, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                       "eval_steps": None, "early_stopping_patience": None, **training}.items():
        setattr(exp.training, key, value)
    exp.generation.max_length, exp.generation.num_beams = 12, 2
    return exp


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_plain_and_fast_evaluation_agree(cold_standins, llm_configs, tiny_llm_data, arch):
    """speed: off (the family's Trainer: prediction_step's loss and generation from the prompts) and the speed
    layer's fast evaluation (merged copy, the family's generate_rows, the dev loss aligned by the family) report the
    same dev loss and the same summaries' scores."""
    from tests.test_models import trial_config
    from trainables.trial.recipe import run_trial

    results = {}
    for speed in (False, True):
        exp = small_trial(llm_configs, arch)
        exp.speed.enabled = speed
        reports = []
        run_trial(trial_config(exp, str(cold_standins[arch]), tiny_llm_data), lambda m, c: reports.append(m))
        results[speed] = reports[-1]
    plain, fast = results[False], results[True]
    assert fast["eff_speed_eval_merged"].startswith("yes") and fast["eff_family"] == plain["eff_family"] == "causal_lm"
    assert fast["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-5)
    for key in ("competition_score", "rouge1", "gen_len"):
        assert fast[key] == pytest.approx(plain[key], abs=1e-6), key


def test_injected_oom_backs_off_at_the_same_effective_batch(cold_standins, llm_configs, tiny_llm_data):
    from tests.fault_injection import callback_spec
    from tests.test_models import trial_config
    from trainables.trial.recipe import run_trial

    exp = small_trial(llm_configs, "llama")  # 4 x 2, QLoRA NF4 on the CPU
    reports = []
    final = run_trial(trial_config(exp, str(cold_standins["llama"]), tiny_llm_data,
                                   callbacks=[callback_spec(oom_above_batch=2)]), lambda m, c: reports.append(m))
    assert (final["eff_train_batch_size"], final["eff_gradient_accumulation_steps"]) == (2, 4)
    assert "OOM at per-device batch 4" in final["eff_notes"] and reports and bool(final["eff_load_in_4bit"])


def test_the_one_loader_choice_follows_the_unsloth_decision(llm_configs):
    """Where decide_settings says a trial trains through Unsloth (a CUDA GPU, installed, imported before
    transformers), model.choose_loader picks Unsloth's loader; anywhere else the plain one (each reason:
    tests/test_unsloth.py). Unsloth itself runs only on a GPU: benchmarks/llm_side_by_side.py."""
    import dataclasses

    from trainables.trial.families.causal_lm import model
    from trainables.trial.models import Environment, decide_settings

    exp = llm_configs[CONFIG_FOR["qwen3"]]
    settings = decide_settings(exp, Environment.probe(), "checkpoint:x")
    assert settings.unsloth is False and model.choose_loader(exp, settings) is model.plain_loader
    assert model.choose_loader(exp, dataclasses.replace(settings, unsloth=True)) is model.unsloth_loader
