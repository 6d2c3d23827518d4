"""`export`: a trial's best checkpoint as a standalone model folder that plain transformers loads and that
summarizes the test dialogues as `predict` does; `--adapter-only`; bad input. And the per-report telemetry
(trainables.trial.telemetry) in Ray Tune's own records. The experiment is the session's smoke grid (offline, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, run_cli, set_fields, trained_lora_checkpoint, write_sample

# Runs in a fresh interpreter, outside the repository, importing nothing of the project.
PLAIN_TRANSFORMERS = textwrap.dedent("""
    import json, sys
    import pandas as pd
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    folder, test_csv, out = sys.argv[1:4]
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prefix = getattr(model.config, "prefix", None) or ""
    dialogues = pd.read_csv(test_csv, dtype=str, keep_default_na=False)["dialogue"].tolist()
    summaries = []
    for d in dialogues:
        enc = tokenizer(prefix + d, truncation=True, return_tensors="pt", return_token_type_ids=False)
        with torch.no_grad():
            ids = model.generate(**enc)  # every setting from the folder's generation_config.json
        summaries.append(" ".join(tokenizer.decode(ids[0], skip_special_tokens=True).split()))
    pipeline_summaries = None
    try:
        from transformers import pipeline
        pipe = pipeline("summarization", model=folder)
    except Exception as err:  # transformers 5 removed the summarization task
        pipeline_error = f"{type(err).__name__}: {err}"
    else:
        pipeline_error = None
        pipeline_summaries = [" ".join(r["summary_text"].split()) for r in pipe(dialogues, truncation=True)]
    project = [m for m in sys.modules if m.split(".")[0] in ("trainables", "tune_main7")]
    json.dump({"summaries": summaries, "pipeline": pipeline_summaries, "pipeline_error": pipeline_error,
               "project_modules": project, "generation": model.generation_config.to_diff_dict()},
              open(out, "w", encoding="utf-8"), ensure_ascii=False)
""")


def _fresh_plain_run(folder: Path, tmp_path: Path, test_csv: Path = ROOT / "data" / "test.csv") -> dict:
    script, out = tmp_path / "plain.py", tmp_path / "plain.json"
    script.write_text(PLAIN_TRANSFORMERS, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script), str(folder), str(test_csv), str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


def _predict_summaries(checkpoint: Path, out: Path, *data_dir: str) -> list[str]:
    proc = run_cli("predict", "--checkpoint", str(checkpoint), "--out", str(out), *data_dir, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return pd.read_csv(out, dtype=str, keep_default_na=False)["summary"].tolist()


def _best_checkpoint(experiment_dir: Path) -> tuple[str, Path]:
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(experiment_dir), default_metric="competition_score", default_mode="max")
    best = analysis.get_best_trial(scope="all")
    return best.config["experiment"]["name"], Path(analysis.get_best_checkpoint(best).path)


@pytest.mark.slow
def test_export_best_trial_loads_with_plain_transformers_and_matches_predict(smoke_grid, tmp_path):
    experiment_dir, grid = smoke_grid
    assert grid.returncode == 0, grid.stderr[-3000:]
    out = tmp_path / "model"
    proc = run_cli("export", str(experiment_dir), "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    name, checkpoint = _best_checkpoint(experiment_dir)
    for f in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"):
        assert (out / f).is_file(), f
    assert not (out / "adapter_config.json").exists()
    meta = json.loads((checkpoint / "trial_meta.json").read_text(encoding="utf-8"))
    exp = meta["experiment"]
    card = (out / "README.md").read_text(encoding="utf-8")
    assert name in card and exp["model"]["checkpoint"] in card and "competition_score" in card
    assert ("dequantized" in card) == bool(meta["settings"]["eff_load_in_4bit"])
    config = json.loads((out / "config.json").read_text())
    assert config["prefix"] == exp["tokenizer"]["input_prefix"]
    gen = json.loads((out / "generation_config.json").read_text())
    for key in ("num_beams", "max_length", "min_length", "no_repeat_ngram_size", "length_penalty"):
        assert gen[key] == exp["generation"][key], key
    tokenizer_vocab = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    added = {t["content"] for t in tokenizer_vocab["added_tokens"]}
    assert set(exp["tokenizer"]["special_tokens"]) <= added

    # 12 test rows, each generated 3-4 times (plain, pipeline, predict on the checkpoint and on the export); was the
    # 50 shipped ones, where 0.99 of them agreeing meant all 50 too
    (tmp_path / "data").mkdir()
    data = write_sample(tmp_path / "data", test=12)
    plain = _fresh_plain_run(out, tmp_path, data / "test.csv")
    assert plain["project_modules"] == []
    predicted = _predict_summaries(checkpoint, tmp_path / "predict.csv", "--data-dir", str(data))
    assert len(predicted) == 12
    assert plain["summaries"] == predicted, [(a, b) for a, b in zip(plain["summaries"], predicted) if a != b][:3]
    if plain["pipeline"] is not None:
        assert plain["pipeline"] == predicted
    # predict reads the exported folder too, and agrees with itself on the checkpoint
    assert _predict_summaries(out, tmp_path / "predict-export.csv", "--data-dir", str(data)) == predicted


@pytest.mark.slow
def test_export_adapter_only_is_the_adapter_and_tokenizer(smoke_grid, tmp_path):
    experiment_dir, _ = smoke_grid
    out = tmp_path / "adapter"
    proc = run_cli("export", str(experiment_dir), "--out", str(out), "--adapter-only", timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    _, checkpoint = _best_checkpoint(experiment_dir)
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= names
    assert not names & {"model.safetensors", "optimizer.pt", "scheduler.pt", "config.json"}, names
    assert (out / "adapter_model.safetensors").read_bytes() == (checkpoint / "adapter_model.safetensors").read_bytes()
    assert "adapter only" in (out / "README.md").read_text(encoding="utf-8")
    # the adapter with the base it names reproduces the checkpoint's summaries (on 12 test rows)
    (tmp_path / "data").mkdir()
    data = ("--data-dir", str(write_sample(tmp_path / "data", test=12)))
    assert _predict_summaries(out, tmp_path / "a.csv", *data) == _predict_summaries(checkpoint, tmp_path / "b.csv", *data)
    # and its tokenizer alone frames a dialogue as the trial did (KoBART's adds no <s> </s> by itself)
    from transformers import AutoTokenizer

    from trainables.data import model_inputs, read_split
    from trainables.trial.families.seq2seq.framing import probe_framing
    from trainables.results.predict import read_meta

    meta = read_meta(checkpoint)
    trained = AutoTokenizer.from_pretrained(str(checkpoint))
    framing = probe_framing(trained, meta["model_path"])
    texts = model_inputs(read_split(ROOT / "data", "dev").frame["dialogue"].head(3).tolist(),
                         meta["experiment"].tokenizer.input_prefix)
    exported = AutoTokenizer.from_pretrained(str(out))
    assert [exported(t, truncation=True)["input_ids"] for t in texts] == \
        framing.encode_inputs(trained, texts, meta["experiment"].tokenizer.encoder_max_len)


def _assert_one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def _no_partial(folder: Path):
    assert not [p for p in folder.iterdir() if ".partial-" in p.name]


def test_export_refuses_a_folder_that_is_not_an_experiment(tmp_path):
    (tmp_path / "not-an-experiment").mkdir()
    proc = run_cli("export", str(tmp_path / "not-an-experiment"), "--out", str(tmp_path / "m"), timeout=120)
    _assert_one_line_error(proc, "not an experiment")
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_export_bad_inputs_on_a_real_experiment(smoke_grid, tmp_path):
    experiment_dir, _ = smoke_grid
    proc = run_cli("export", str(experiment_dir), "--trial", "no_such_trial", "--out", str(tmp_path / "m"), timeout=300)
    _assert_one_line_error(proc, "no_such_trial", "01_baseline_kobart_rtx3090")
    assert not (tmp_path / "m").exists()
    _no_partial(tmp_path)

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    proc = run_cli("export", str(experiment_dir), "--out", str(taken), timeout=300)
    _assert_one_line_error(proc, str(taken), "not an empty folder")
    assert [p.name for p in taken.iterdir()] == ["keep.txt"] and (taken / "keep.txt").read_text() == "mine"

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = run_cli("export", str(experiment_dir), "--out", str(blocker / "model"), timeout=300)
    _assert_one_line_error(proc, "can't write there")
    assert blocker.read_text() == "x"
    _no_partial(tmp_path)


@pytest.mark.slow
def test_telemetry_fields_in_experiment_analysis_for_every_trial(smoke_grid):
    from ray.tune import ExperimentAnalysis

    from trainables.config import load_search_space
    from trainables.trial.telemetry import GPU_FIELDS

    experiment_dir, _ = smoke_grid
    analysis = ExperimentAnalysis(str(experiment_dir), default_metric="competition_score", default_mode="max")
    assert len(analysis.trials) == len(load_search_space(ROOT / "search_spaces"))
    for trial in analysis.trials:
        frame = analysis.trial_dataframes[trial.trial_id]
        assert len(frame) >= 1
        for column in ("train_samples_per_s", "train_label_tokens_per_s", "eval_s"):
            assert column in frame and (frame[column] > 0).all(), (trial.config["experiment"]["name"], column)
        # label tokens per sample: between 1 and the decoder length the smoke mode allows
        per_sample = frame["train_label_tokens_per_s"] / frame["train_samples_per_s"]
        assert ((per_sample >= 1) & (per_sample <= trial.config["experiment"]["tokenizer"]["decoder_max_len"])).all()
        assert not set(GPU_FIELDS) & set(frame.columns), "a CPU trial must not report GPU fields"


def test_gpu_sampler_summarizes_nvml_samples(monkeypatch):
    """The sampling thread and the interval summary, with NVML's answers faked (no GPU here): ten readings,
    then the driver goes away, which stops the thread with the ten samples kept."""
    import time
    import types

    import pynvml

    from trainables.trial import telemetry

    readings = [90, 10, 80, 70, 60, 50, 40, 30, 20, 100]
    calls = []

    def utilization(handle):
        if len(calls) == len(readings):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        calls.append(handle)
        return types.SimpleNamespace(gpu=readings[len(calls) - 1])

    monkeypatch.setattr(telemetry, "nvml_handle", lambda: "handle")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates", utilization)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", lambda h: types.SimpleNamespace(used=3 * 2**30))

    def no_power(handle):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetPowerUsage", no_power)
    sampler = telemetry.GpuSampler(interval_s=0.001)
    try:
        deadline = time.time() + 10
        while len(calls) < len(readings) and time.time() < deadline:
            time.sleep(0.01)
    finally:
        sampler.stop()  # waits for the thread: the sample being read when it stops is kept
    fields = sampler.take()
    assert fields["gpu_util_mean"] == 55.0 and fields["gpu_util_p10"] == 10.0 and fields["gpu_mem_used_gb"] == 3.0
    assert "gpu_power_w" not in fields  # not given by the driver: absent, not zero


def test_no_gpu_fields_without_a_gpu():
    from trainables.trial.telemetry import GPU_FIELDS, Telemetry

    t = Telemetry(gpu=True)  # asked for, but this machine has no CUDA device
    try:
        fields = t.collect(eval_s=1.5)
    finally:
        t.stop()
    assert not set(GPU_FIELDS) & set(fields)
    assert fields["eval_s"] == 1.5 and fields["train_samples_per_s"] == 0


@pytest.mark.parametrize("config, arch", [
    ("01_baseline_kobart_rtx3090", "bart"),  # 4-bit base, output head tied to the embeddings, new-token rows trained
    ("01_mt5_xlsum_ultimate", "mt5"),  # 4-bit base, LoRA on `shared` (aliased as embed_tokens) and on lm_head
    ("02_eenzeenee_t5_rtx3090", "t5"),  # full-precision base, untied head with its own new-token rows
])
def test_merged_model_computes_what_the_checkpoint_computes(config, arch, standin_cache, tmp_path):
    """The merged, saved and reloaded model gives predict's logits (within fp32 merge rounding): the adapter is
    merged only into the modules that computed with it, a tied head or aliased embedding is untied first."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from trainables.results.export import merged_model
    from trainables.results.predict import load_for_inference

    checkpoint = tmp_path / "checkpoint"
    meta, tokenizer, settings = trained_lora_checkpoint(checkpoint, config, arch, standin_cache)

    reference, _ = load_for_inference(checkpoint, meta)
    merged, _ = merged_model(checkpoint, meta, "fp32")
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged")
    enc = tokenizer(["#Person1#: 안녕하세요 #Person2#: 네, 반갑습니다"], return_tensors="pt")
    new_token = tokenizer.convert_tokens_to_ids("#Person2#")
    decoder = torch.tensor([[reference.config.decoder_start_token_id, 5, 7, new_token]])
    with torch.no_grad():
        want = reference(**enc, decoder_input_ids=decoder).logits
        got = reloaded(**enc, decoder_input_ids=decoder).logits
    assert settings.load_in_4bit == (arch != "t5")
    assert (want - got).abs().max().item() < 1e-4 * want.abs().max().item(), (want - got).abs().max().item()


from tests.test_models import configs, small_trial_exp, standins, tiny_data, trial_config  # noqa: E402,F401  (fixtures)


def test_trial_reports_throughput_counted_from_the_training_batches(configs, standins, tiny_data, monkeypatch):
    """Through run_trial (no Ray), with accumulation 2 and an evaluation every step plus each epoch's end: every
    report counts exactly the samples and label tokens the optimizer saw since the previous one."""
    import copy

    from trainables.trial import telemetry
    from trainables.data import read_split
    from trainables.trial.families.common import load_tokenizer
    from trainables.trial.families.seq2seq.framing import probe_framing, tokenize_split
    from trainables.trial.recipe import run_trial

    exp = small_trial_exp(configs, num_train_epochs=2, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                          eval_steps=1)
    counted = []
    restart = telemetry.Telemetry.restart

    def spy(self):
        counted.append((self.samples, int(self.label_tokens)))
        restart(self)

    monkeypatch.setattr(telemetry.Telemetry, "restart", spy)
    reports = []
    run_trial(trial_config(copy.deepcopy(exp), standins("bart"), tiny_data), lambda m, c: reports.append(m))
    tok = exp.tokenizer
    tokenizer = load_tokenizer(standins("bart"), tok.special_tokens)
    framing = probe_framing(tokenizer, str(standins("bart")))  # as run_trial frames the labels it counts
    train = tokenize_split(read_split(tiny_data, "train").frame, tokenizer, tok.input_prefix, tok.encoder_max_len,
                           tok.decoder_max_len, framing)
    label_tokens = sum(len(labels) for labels in train["labels"])
    per_report = counted[1:]  # the first restart is the Trainer's on_train_begin
    assert len(reports) == len(per_report) >= 2
    assert sum(s for s, _ in per_report) == 2 * len(train)  # two epochs, every row once each
    assert sum(t for _, t in per_report) == 2 * label_tokens
    for report, (samples, _) in zip(reports, per_report):
        # zero only where no step ran since the previous report (a step evaluation, then the epoch-end one)
        assert (report["train_samples_per_s"] > 0) == (samples > 0) and report["eval_s"] > 0
        assert (report["train_label_tokens_per_s"] > 0) == (samples > 0)
        assert not set(telemetry.GPU_FIELDS) & set(report)


# ---------------------------------------------------------------------------------------------------
# Framing (families/seq2seq/framing.py) carried into the exported folder, for each foreign tokenizer layout

from tests.foreign_checkpoints import LAYOUTS  # noqa: E402
from tests.test_framing import CONFIG_FOR, foreign  # noqa: E402,F401  (the session's foreign model folders)

# Plain transformers in a fresh interpreter: the saved tokenizer's own input ids and generate()'s summaries.
PLAIN_FRAMED = textwrap.dedent("""
    import json, sys
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    folder, texts, out = sys.argv[1], json.loads(open(sys.argv[2], encoding="utf-8").read()), sys.argv[3]
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids, summaries = [], []
    for text in texts:
        enc = tokenizer(text, truncation=True, return_tensors="pt", return_token_type_ids=False)
        ids.append(enc["input_ids"][0].tolist())
        with torch.no_grad():
            row = model.generate(**enc)[0]  # every setting from generation_config.json
        summaries.append(" ".join(tokenizer.decode(row, skip_special_tokens=True).split()))
    json.dump({"ids": ids, "summaries": summaries}, open(out, "w", encoding="utf-8"), ensure_ascii=False)
""")


def _finished_trial(exp, folder: Path):
    """What write_model_folder reads of a Tune trial (id, config, status, folder), for a trial that finished."""
    from types import SimpleNamespace

    return SimpleNamespace(trial_id="t0", config={"experiment": exp.model_dump()}, status="TERMINATED", path=str(folder))


def _lora_checkpoint(model_path: str, exp, folder: Path) -> Path:
    """A checkpoint as a trial leaves one: the project's tokenizer (added tokens), the grown base with a LoRA
    adapter (nonzero, so the merge matters) saved by peft, and trial_meta.json."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSeq2SeqLM

    from trainables.trial.families.common import grow_vocabulary, load_tokenizer
    from trainables.layout import TRIAL_META

    tokenizer = load_tokenizer(model_path, exp.tokenizer.special_tokens)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_path)
    grow_vocabulary(model, tokenizer, exp.training.seed)
    targets = ["q", "v"] if model.config.model_type in ("t5", "mt5") else ["q_proj", "v_proj"]
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="SEQ_2_SEQ_LM"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / TRIAL_META).write_text(json.dumps({"experiment": exp.model_dump(), "model_path": model_path,
                                                 "settings": {"eff_lora": True, "eff_load_in_4bit": False}}))
    return folder


@pytest.mark.slow  # about 30 s a layout on 2 shared cores (tokenizer training, a fresh interpreter)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_exported_tokenizer_and_generation_config_frame_as_the_project_does(foreign, layout, tmp_path):  # noqa: F811
    """Not on the smoke grid: a LoRA checkpoint of each foreign layout, exported, then read by plain transformers
    in a fresh process: the tokenizer's own input ids are the project's framed ids (KoBART's tokenizer adds
    nothing by itself) and generate() with the saved generation_config gives predict's summaries."""
    from trainables.config import apply_mode, load_search_space
    from trainables.data import model_inputs, read_split
    from trainables.results.export import write_model_folder
    from trainables.trial.families.seq2seq.framing import probe_framing
    from trainables.trial.families.seq2seq.generate import generate_summaries
    from trainables.results.predict import load_for_inference, read_meta, recorded_framing

    exp, _ = apply_mode(load_search_space(ROOT / "search_spaces", [CONFIG_FOR[layout]])[0], "smoke")
    exp.tokenizer.encoder_max_len = 48  # the dialogues are longer: truncation must leave room for the frame
    set_fields(exp.generation, max_length=12, min_length=2, num_beams=2, no_repeat_ngram_size=2)
    checkpoint = _lora_checkpoint(foreign[layout], exp, tmp_path / "checkpoint")
    out = tmp_path / "model"
    write_model_folder(layout, _finished_trial(exp, tmp_path), checkpoint, {}, out, False, "fp32", "competition_score")
    assert "Framing (as in training)" in (out / "README.md").read_text(encoding="utf-8")

    dialogues = read_split(ROOT / "data", "dev").frame["dialogue"].head(4).tolist()
    dialogues.append("#Person1#: 안녕 #Person2#: 네")  # short: nothing to cut
    texts = model_inputs(dialogues, exp.tokenizer.input_prefix)
    (tmp_path / "texts.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    script, result = tmp_path / "plain_framed.py", tmp_path / "plain_framed.json"
    script.write_text(PLAIN_FRAMED, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "texts.json"), str(result)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = json.loads(result.read_text(encoding="utf-8"))

    model, tokenizer = load_for_inference(checkpoint, read_meta(checkpoint))  # predict's path on the checkpoint
    framing = probe_framing(tokenizer, model.config)
    assert plain["ids"] == framing.encode_inputs(tokenizer, texts, exp.tokenizer.encoder_max_len)
    predicted = generate_summaries(model, tokenizer, dialogues, exp, batch_size=1)
    assert plain["summaries"] == [" ".join(s.split()) for s in predicted]
    # predict on the exported folder frames as on the checkpoint (its tokenizer now adds the frame itself)
    exported_meta = read_meta(out)
    assert recorded_framing(exported_meta) == framing
    model, tokenizer = load_for_inference(out, exported_meta)
    assert generate_summaries(model, tokenizer, dialogues, exp, batch_size=1, framing=recorded_framing(exported_meta)) == predicted


@pytest.mark.slow  # builds the KoBART-like foreign folder (tokenizer training) in a fresh session
def test_adapter_only_export_frames_and_predicts_as_the_checkpoint(foreign, tmp_path):  # noqa: F811
    """--adapter-only on a KoBART-layout checkpoint (a tokenizer that adds nothing by itself): the folder's tokenizer
    frames inputs `<s> ... </s>` as the trial did, and predict on the folder gives the checkpoint's summaries."""
    from transformers import AutoTokenizer

    from trainables.config import apply_mode, load_search_space
    from trainables.data import model_inputs, read_split
    from trainables.results.export import write_model_folder
    from trainables.trial.families.seq2seq.framing import probe_framing
    from trainables.trial.families.seq2seq.generate import generate_summaries
    from trainables.results.predict import load_for_inference, read_meta, recorded_framing

    exp, _ = apply_mode(load_search_space(ROOT / "search_spaces", [CONFIG_FOR["kobart"]])[0], "smoke")
    set_fields(exp.generation, max_length=12, min_length=2, num_beams=2)
    checkpoint = _lora_checkpoint(foreign["kobart"], exp, tmp_path / "checkpoint")
    out = tmp_path / "adapter"
    write_model_folder("kobart", _finished_trial(exp, tmp_path), checkpoint, {}, out, True, "fp32",
                       "competition_score")
    assert not (out / "model.safetensors").exists() and (out / "adapter_model.safetensors").is_file()

    dialogues = read_split(ROOT / "data", "dev").frame["dialogue"].head(3).tolist()
    texts = model_inputs(dialogues, exp.tokenizer.input_prefix)
    model, tokenizer = load_for_inference(checkpoint, read_meta(checkpoint))
    framing = probe_framing(tokenizer, model.config)
    exported_tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert [exported_tokenizer(t, truncation=True)["input_ids"] for t in texts] == \
        framing.encode_inputs(tokenizer, texts, exp.tokenizer.encoder_max_len)
    assert framing.encode_inputs(tokenizer, texts, 64)[0][0] == tokenizer.bos_token_id  # the frame is there
    predicted = generate_summaries(model, tokenizer, dialogues, exp, batch_size=1)
    exported_meta = read_meta(out)
    assert recorded_framing(exported_meta) == framing
    model, tokenizer = load_for_inference(out, exported_meta)
    assert generate_summaries(model, tokenizer, dialogues, exp, batch_size=1, framing=recorded_framing(exported_meta)) \
        == predicted
