"""The model-family protocol's contract (trainables.trial.families.ModelFamily), run against every registered
family whose module imports, one tiny stand-in per architecture it serves: what the recipe, predict and export
rely on, whatever the family. A new family passes these before anything else runs it.

Also: the seam holds, i.e. no module outside a family names a family's transformers classes or branches on
its architectures."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, save_trial_checkpoint, trained_like
from trainables.trial.families import FAMILIES, LoadRecord, ModelFamily, family_of, shapes_of


def _importable_families() -> list[str]:
    """The registered families whose folder is there and exposes FAMILY (a folder holding only the plan's
    shapes.py, a family still being written, is not one yet)."""
    found = []
    for module in sorted(set(FAMILIES.values())):
        try:
            package = importlib.import_module(f"trainables.trial.families.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"trainables.trial.families.{module}":
                raise  # the family's folder is there but broken: a failure, not a skip
            continue
        if hasattr(package, "FAMILY"):
            found.append(module)
    return found


FAMILY_MODULES = _importable_families()
ARCHITECTURES = sorted(a for a, m in FAMILIES.items() if m in FAMILY_MODULES)
DIALOGUES = ["#Person1#: 안녕하세요. 오늘 날씨가 좋네요. #Person2#: 네, 산책하기 좋아요.",
             "#Person1#: 회의는 몇 시예요? #Person2#: 세 시에 시작해요.",
             "#Person1#: 점심 먹었어요? #Person2#: 아직이요, 같이 가요."]
GRIDS = (ROOT / "search_spaces", ROOT / "search_spaces" / "llm")  # the seven, the decoder-only grid
CPU = dict(cuda=False, bf16_supported=False, device_name="cpu", unsloth_installed=False, bitsandbytes_installed=True)


def shipped_config(arch: str):
    """A shipped experiment of `arch` in smoke mode, shrunk for the CPU (lengths, beams)."""
    from trainables.config import apply_mode, load_search_space

    configs = [c for folder in GRIDS for c in load_search_space(folder) if c.model.architecture == arch]
    if not configs:
        pytest.skip(f"no config in {', '.join(str(g.relative_to(ROOT)) for g in GRIDS)} has model.architecture {arch}")
    exp, _ = apply_mode(configs[0], "smoke")
    # 160: room for a decoder-only prompt's template and system message (the qwen3 config's is ~90 stand-in tokens)
    exp.tokenizer.encoder_max_len, exp.tokenizer.decoder_max_len = 160, 16
    exp.generation.num_beams, exp.generation.max_length, exp.generation.min_length = 1, 12, 1
    exp.training.per_device_eval_batch_size = 2
    return exp


@pytest.fixture(scope="module")
def standin(standin_cache):
    """architecture -> (family, experiment, stand-in folder), built once per session (no warm start)."""
    from trainables.data import training_texts

    texts, made = training_texts(ROOT / "data"), {}

    def get(arch: str):
        if arch not in made:
            family = family_of(arch)
            made[arch] = family, shipped_config(arch), str(family.build_standin(arch, texts, standin_cache,
                                                                                warm_start=False))
        return made[arch]

    return get


@pytest.fixture(scope="module")
def loaded(standin):
    """architecture -> (family, exp, folder, tokenizer, framing, model, LoadRecord, settings)."""
    from trainables.trial.models import Environment, decide_settings

    made = {}

    def get(arch: str):
        if arch not in made:
            family, exp, path = standin(arch)
            settings = decide_settings(exp, Environment(**CPU), f"standin:{arch}")
            before = dataclasses.asdict(settings)
            tokenizer = family.load_tokenizer(path, exp)
            framing = family.framing(tokenizer, path, exp)
            model, record = family.load_model(exp, path, tokenizer, settings)
            assert dataclasses.asdict(settings) == before, "load_model changed the settings it was given"
            made[arch] = family, exp, path, tokenizer, framing, model, record, settings
        return made[arch]

    return get


def frame(split: str = "train", rows: int = 4):
    from trainables.data import read_split

    return read_split(ROOT / "data", split, warn=False).frame.head(rows)


# ---------------------------------------------------------------------------------------------------
# The registry and the static half


def test_seq2seq_is_registered_and_imports():
    assert "seq2seq" in FAMILY_MODULES
    assert {"t5", "mt5", "bart"} <= set(ARCHITECTURES)


@pytest.mark.parametrize("module", FAMILY_MODULES)
def test_family_implements_every_method_of_the_protocol(module):
    family = importlib.import_module(f"trainables.trial.families.{module}").FAMILY
    assert family.name == module
    wanted = [n for n in vars(ModelFamily) if not n.startswith("_")]
    missing = [n for n in wanted if not callable(getattr(family, n, None))]
    assert missing == []
    assert isinstance(family.architectures, frozenset)
    assert all(family.shapes is shapes_of(a) for a in family.architectures)
    assert family.architectures == {a for a, m in FAMILIES.items() if m == module}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_static_half_imports_no_torch(arch):
    """`check` and `plan` stay instant: the family's static methods run without torch or transformers."""
    code = f"""
import sys
from trainables.config import apply_mode, load_search_space
from trainables.trial.families import family_of
family = family_of({arch!r})
configs = [c for c in load_search_space('search_spaces') if c.model.architecture == {arch!r}]
for exp in configs:
    family.static_problems(exp)
assert family.lora_target_names({arch!r})
family.architecture_problem({arch!r}, {arch!r}, 'x')
family.fp16_overflows({arch!r})
family.real_dims({arch!r})
dims = family.shapes.dims({arch!r}, None, 'known')
assert family.shapes.linear_modules(dims) and family.shapes.parameter_count(dims) > 0
heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'datasets', 'ray') if m in sys.modules)
assert not heavy, heavy
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_architecture_check_accepts_its_own_and_names_the_fix_for_another(arch):
    family = family_of(arch)
    assert family.architecture_problem(arch, arch, "ckpt") is None
    assert family.architecture_problem(arch, None, "ckpt") is None  # no config.json to judge by
    other = next(a for a in FAMILIES if family_of(a) is not family) if len(FAMILY_MODULES) > 1 else "gpt2"
    problem = family.architecture_problem(arch, other, "ckpt")
    assert problem and "ckpt" in problem and "model.architecture" in problem


# ---------------------------------------------------------------------------------------------------
# Models, data, generation, export: one tiny stand-in per architecture


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_standin_loads_as_its_architecture_with_the_added_tokens(standin, arch):
    family, exp, path = standin(arch)
    assert (Path(path) / "config.json").is_file()
    assert family.architecture_problem(arch, json.loads((Path(path) / "config.json").read_text())["model_type"],
                                       path) is None
    tokenizer = family.load_tokenizer(path, exp)
    assert tokenizer.pad_token_id is not None
    for token in exp.tokenizer.special_tokens:  # one ordinary token each, kept by skip_special_tokens decoding
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.decode(ids, skip_special_tokens=True).strip() == token


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_load_model_returns_its_record_and_trains_adapter_and_added_rows(loaded, arch):
    family, exp, path, tokenizer, framing, model, record, settings = loaded(arch)
    assert isinstance(record, LoadRecord) and isinstance(record.notes, tuple)
    assert record.token_rows.startswith(f"{len(exp.tokenizer.special_tokens)} added token rows")
    assert any(p.requires_grad for p in model.parameters())
    embeddings = model.get_input_embeddings()  # peft's wrapper where it trains the added rows (a llama's embed_tokens)
    assert getattr(embeddings, "original_module", embeddings).num_embeddings >= len(tokenizer)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tokenize_labels_end_in_exactly_one_eos_and_collate_with_minus_100(loaded, arch):
    family, exp, path, tokenizer, framing, model, *_ = loaded(arch)
    data = family.tokenize(frame("train", 4), tokenizer, exp, framing)
    eos = tokenizer.eos_token_id
    for row in data:
        labels = [t for t in row["labels"] if t != -100]
        assert labels and labels[-1] == eos and labels.count(eos) == 1, labels
        assert len(row["input_ids"]) == len(row["attention_mask"])
    batch = family.collator(tokenizer, model)([data[i] for i in range(len(data))])
    lengths = [sum(1 for t in row["labels"]) for row in data]
    for labels, n in zip(batch["labels"].tolist(), lengths):
        assert all(t == -100 for t in labels[n:])  # padding never counts in the loss
    test_rows = family.tokenize(frame("test", 2), tokenizer, exp, framing)
    assert "labels" not in test_rows.column_names


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_loss_sees_one_logit_row_per_label(loaded, arch):
    family, exp, path, tokenizer, framing, model, *_ = loaded(arch)
    data = family.tokenize(frame("train", 2), tokenizer, exp, framing)
    batch = family.collator(tokenizer, model)([data[i] for i in range(len(data))])
    import torch

    with torch.no_grad():
        outputs = model(**batch)
    logits, labels = family.token_logits_and_labels(outputs, batch["labels"])
    assert logits.shape[:-1] == labels.shape and logits.shape[-1] >= len(tokenizer)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_generate_gives_one_cleaned_summary_per_dialogue_in_order(loaded, arch):
    family, exp, path, tokenizer, framing, model, *_ = loaded(arch)
    once = family.generate(model, tokenizer, DIALOGUES, exp, framing=framing, batch_size=1)
    reverse = family.generate(model, tokenizer, DIALOGUES[::-1], exp, framing=framing, batch_size=1)
    assert len(once) == len(DIALOGUES) and all(isinstance(s, str) for s in once)
    assert once == reverse[::-1]
    added = set(exp.tokenizer.special_tokens)
    specials = [t for t in tokenizer.all_special_tokens if t not in added]
    assert not [s for s in once if any(t in s for t in specials)], once
    assert len(family.generate(model, tokenizer, DIALOGUES, exp, framing=framing)) == len(DIALOGUES)  # batched


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_framing_is_recorded_and_read_back(loaded, arch):
    family, *_, framing = loaded(arch)[:5]
    assert family.framing_from_record(json.loads(json.dumps(dataclasses.asdict(framing)))) == framing
    assert framing.describe() and isinstance(framing.notes, tuple) and isinstance(framing.pad_id, int)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_load_for_inference_rebuilds_what_was_trained(loaded, arch, tmp_path):
    import torch

    family, exp, path, tokenizer, framing, model, record, settings = loaded(arch)  # it has generated: fine
    trained_like(model, seed=1)
    meta = save_trial_checkpoint(model, tokenizer, tmp_path, exp, path, settings)
    rebuilt, rebuilt_tokenizer = family.load_for_inference(tmp_path, meta)
    assert rebuilt_tokenizer.get_vocab() == tokenizer.get_vocab()
    data = family.tokenize(frame("dev", 2), tokenizer, exp, framing)
    batch = family.collator(tokenizer, model)([data[i] for i in range(len(data))])
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        want, got = model(**batch).logits, rebuilt(**batch).logits
    assert torch.allclose(want, got, atol=1e-5, rtol=1e-4), (want - got).abs().max().item()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_prepared_export_tokenizer_frames_inputs_as_training_did(loaded, arch):
    """What the exported folder's model card tells a user to feed the model (plain transformers: the seq2seq
    tokenizer's own framing, a causal LM's chat template) is what training fed it."""
    import pandas as pd

    family, exp, path, tokenizer, framing, model, *_ = loaded(arch)
    tokenizer = family.load_tokenizer(path, exp)  # a fresh one: prepare_export changes it
    rows = pd.DataFrame({"dialogue": DIALOGUES})  # short enough for every family's budget
    want = family.tokenize(rows, tokenizer, exp, framing)["input_ids"]
    tokenizer.model_max_length = exp.tokenizer.encoder_max_len  # as export sets it
    family.prepare_export(None, tokenizer, framing, exp)
    assert [family.exported_inputs(tokenizer, d, exp) for d in DIALOGUES] == want


@pytest.mark.parametrize("module", FAMILY_MODULES)
def test_trainer_and_arguments_are_transformers_classes(module):
    from transformers import Trainer, TrainingArguments

    family = importlib.import_module(f"trainables.trial.families.{module}").FAMILY
    assert issubclass(family.trainer_class(), Trainer)
    assert issubclass(family.training_arguments_class(), TrainingArguments)
    assert family.model_class().__name__.startswith("AutoModelFor")


def test_a_trial_records_its_family():
    """eff_family: every trial's results say which family ran it (from decide_settings, through as_metrics)."""
    from trainables.trial.models import Environment, decide_settings

    for arch in ARCHITECTURES:
        try:
            exp = shipped_config(arch)
        except pytest.skip.Exception:
            continue
        metrics = decide_settings(exp, Environment(**CPU), "x").as_metrics()
        assert metrics["eff_family"] == family_of(arch).name


def test_settings_are_frozen_and_the_records_are_folded_in_once():
    """EffectiveSettings is decided once; the framing's and the loading's records come as a new record
    (recipe.settings_as_run), from the decided settings each attempt, so an OOM retry's reload adds no second copy."""
    from trainables.trial.models import Environment, decide_settings
    from trainables.trial.recipe import settings_as_run

    exp = shipped_config("bart")
    decided = decide_settings(exp, Environment(**CPU), "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        decided.train_batch_size = 1
    assert isinstance(decided.notes, tuple)

    @dataclasses.dataclass(frozen=True)
    class Framed:
        notes: tuple[str, ...] = ("framing note",)

        def describe(self) -> str:
            return "framed so"

    loaded = LoadRecord("2 added token rows 7-8: rows trained in embed_tokens", ("loading note",))
    first = settings_as_run(decided, Framed(), loaded)
    retried = settings_as_run(decided.with_batch(4, 2, "OOM note"), Framed(), loaded)
    assert (first.framing, first.token_rows) == ("framed so", loaded.token_rows)
    assert first.notes == (*decided.notes, "framing note", "loading note")
    assert retried.notes == (*decided.notes, "OOM note", "framing note", "loading note")
    assert decided.framing == "" and decided.notes == decide_settings(exp, Environment(**CPU), "x").notes


# ---------------------------------------------------------------------------------------------------
# The seam holds

FAMILY_CLASSES = ("AutoModelForSeq2SeqLM", "Seq2SeqTrainer", "DataCollatorForSeq2Seq", "Seq2SeqTrainingArguments")


def _outside_families() -> list[Path]:
    return [p for p in sorted((ROOT / "trainables").rglob("*.py"))
            if "families" not in p.relative_to(ROOT / "trainables").parts]


def _architecture_branches(tree: ast.AST) -> list[int]:
    """Lines comparing something with a family's architecture names ("t5", ("t5", "mt5"), "bart", ...)."""
    names = set(FAMILIES)

    def literal(node) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(literal(e) for e in node.elts)

    return [n.lineno for n in ast.walk(tree)
            if isinstance(n, ast.Compare) and any(literal(x) for x in [n.left, *n.comparators])]


ARCHITECTURE_NAME = re.compile(r"(^|_)(T5|MT5|BART|t5|mt5|bart)(_|$)")  # T5_FAMILY, UNTIED_T5_NOTE, is_bart, ...


def _architecture_names(tree: ast.AST) -> list[int]:
    """Lines defining or using a name about one architecture (a T5-versus-BART branch by another name)."""
    def name(n):
        return getattr(n, "id", None) or getattr(n, "attr", None) or (
            n.name if isinstance(n, (ast.FunctionDef, ast.ClassDef)) else None)

    return [n.lineno for n in ast.walk(tree) if isinstance(name(n), str) and ARCHITECTURE_NAME.search(name(n))]


def test_no_module_outside_the_families_names_a_family_class_or_branches_on_architecture():
    names, branches = [], []
    for path in _outside_families():
        rel = path.relative_to(ROOT / "trainables").as_posix()
        text = path.read_text()
        names += [f"{rel}: {c}" for c in FAMILY_CLASSES if c in text]
        tree = ast.parse(text)
        branches += [f"{rel}:{line}" for line in _architecture_branches(tree) + _architecture_names(tree)]
    assert names == [] and branches == []


def test_the_seam_scan_finds_what_it_looks_for():
    code = ast.parse("T5_FAMILY = ('t5', 'mt5')\nif arch in T5_FAMILY: pass\nif exp.model.architecture == 'bart': pass\n"
                     "if arch in ('mt5', 'x'): pass\nif arch == 'llama3': pass\nbartender = 1\n")
    assert _architecture_branches(code) == [3, 4]
    assert sorted(set(_architecture_names(code))) == [1, 2]
