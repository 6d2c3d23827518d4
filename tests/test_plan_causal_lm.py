"""The plan for the decoder-only family (trainables/trial/families/causal_lm/shapes.py), on CPUs: the shapes of the
shipped checkpoints, the count against built models, the merged copy only where it fits, the table's line on what
the predictions rest on (search_spaces/llm on a 24 GB card), and the plan against the H200 measurements of
FIELD-NOTES.md ("Decoder-only LLMs")."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import tune_main7
from tests.conftest import ROOT
from trainables.config import apply_mode, load_search_space
from trainables.driver import calibration, features, plan
from trainables.trial.families.causal_lm import shapes
from trainables.trial.placement import merged_copy_fits

ARCHS = ("qwen2", "qwen3", "llama")
LLM = ROOT / "search_spaces" / "llm"


def shipped(arch: str):
    """The shipped decoder-only config of `arch` (search_spaces/llm/), as --mode full runs it."""
    return next(apply_mode(c, "full")[0] for c in load_search_space(LLM) if c.model.architecture == arch)


def causal_exp(arch: str, batch: int | None = None, four_bit: bool | None = None, rank: int | None = None,
               prompt: int | None = None, summary: int | None = None, gc: bool | None = None):
    """The shipped config of `arch` with the given settings changed (None: as shipped)."""
    exp = shipped(arch)
    changes = {"qlora": {"load_in_4bit": four_bit, "lora_rank": rank},
               "training": {"per_device_train_batch_size": batch, "gradient_checkpointing": gc},
               "tokenizer": {"encoder_max_len": prompt, "decoder_max_len": summary}}
    for section, values in changes.items():
        values = {k: v for k, v in values.items() if v is not None}
        setattr(exp, section, getattr(exp, section).model_copy(update=values))
    return exp


@pytest.mark.parametrize("arch, billions", [("qwen2", 1.54), ("qwen3", 4.02), ("llama", 10.7)])
def test_known_dimensions_give_the_shipped_checkpoints_sizes(arch, billions):
    """Qwen2.5-1.5B-Instruct ~1.54B, Qwen3-4B-Instruct-2507 ~4.02B, SOLAR-10.7B-Instruct ~10.7B parameters."""
    d = features.model_dims(arch, "not/on-disk")
    assert d.source.startswith("known dimensions of " + shapes.KNOWN_DIMS[arch]["checkpoint"])
    assert features.parameter_count(d) / 1e9 == pytest.approx(billions, rel=0.02)


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_count_from_config_json_matches_a_built_model(arch, tmp_path):
    """The count from config.json equals the built model's parameters less its norms and biases (Qwen2's q/k/v
    biases, Qwen3's q/k norms): grouped-query k/v widths, head_dim and the tied or untied head included."""
    import transformers

    config_class = {"qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config,
                    "llama": transformers.LlamaConfig}[arch]
    cfg = config_class(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=24, vocab_size=500, tie_word_embeddings=arch != "llama")
    cfg.save_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    norms_and_biases = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    d = features.model_dims(arch, "some/checkpoint", str(tmp_path))
    assert d.source.endswith("config.json") and d.head_dim == 24 and d.kv_heads == 2
    assert features.parameter_count(d) == model.num_parameters() - norms_and_biases


def test_the_plan_imports_no_torch_for_either_family():
    code = ("import sys; from tests.test_plan_causal_lm import causal_exp; from trainables.driver import calibration, "
            "plan; card = calibration.CARDS['rtx3090']; calib = calibration.load_calibration('h100'); "
            "[plan.plan_trial(causal_exp(a), 100, 10, calib, card) for a in ('qwen2', 'llama')]; "
            "from trainables.config import load_search_space; "
            "[plan.plan_trial(e, 100, 10, calib, card) for e in load_search_space(__import__('pathlib').Path('search_spaces'))]; "
            "print([m for m in ('torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_merged_copy_only_where_it_fits_beside_the_training_model():
    """SOLAR's bf16 copy (~20 GiB) does not fit the 20 GiB cap beside its 4-bit training model: generation then runs
    from the training model (4-bit calls, no copy in memory), and the plan says so. Qwen2.5-1.5B's (~3 GiB) fits."""
    calib = calibration.load_calibration("h100")
    solar = plan.plan_trial(causal_exp("llama"), 1000, 50, calib, calibration.CARDS["rtx3090"])
    assert not solar.merged_copy and any("merged bf16 copy (20.0 GiB) does not fit" in n for n in solar.notes)
    qwen = plan.plan_trial(causal_exp("qwen2"), 1000, 50, calib, calibration.CARDS["rtx3090"])
    assert qwen.merged_copy and not any("merged" in n for n in qwen.notes)
    # the rule itself, as the speed layer may call it with what the allocator holds
    assert merged_copy_fits(6.5, 20.0, 1.0, None) and not merged_copy_fits(6.5, 20.0, 1.0, 20.0)
    # a larger cap on a larger card: the copy fits, and generation from it is faster than from the 4-bit model
    exp = causal_exp("llama")
    exp.speed = exp.speed.model_copy(update={"memory_gib": 100.0})
    roomy = plan.plan_trial(exp, 1000, 50, calib, calibration.CARDS["h200"])
    assert roomy.merged_copy and roomy.eval_s < solar.eval_s * calibration.CARDS["rtx3090"].bandwidth_tbs


def test_the_decoder_only_grid_on_a_24gb_card_prints_a_table_that_says_what_it_rests_on(capsys):
    assert tune_main7.main(["plan", "--search-space", str(LLM), "--card", "rtx3090"]) == 0
    table = capsys.readouterr().out
    names = [e.name for e in load_search_space(LLM)]
    assert len(names) == 3 and all(n in table for n in names) and "Grid: 3 trials" in table
    line = next(line for line in table.splitlines() if "not calibrated on a GPU" in line)
    assert line.strip().startswith("causal_lm (") and "seq2seq coefficients" in line and shapes.FEATURES in line
    assert all(n in line.split(": not calibrated")[0] for n in names)
    solar = next(n for n in names if "solar" in n)
    assert f"note {solar}: the fast evaluation's merged bf16 copy (20.0 GiB) does not fit" in table
    assert tune_main7.main(["plan", "--card", "rtx3090"]) == 0  # the seven: their table measured their family
    assert "not calibrated on a GPU" not in capsys.readouterr().out


# FIELD-NOTES.md, "Decoder-only LLMs": H200, plain transformers + peft (+ NF4 with prepare_model_for_kbit_training),
# LoRA r16 on all seven projections, 640-token rows (a 512-token prompt, the loss on the last 128), no checkpointing.
QWEN25 = {"0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
          "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)}


@pytest.mark.parametrize("size, batch, four_bit, measured_gib", [("0.5B", 8, True, 29.0), ("0.5B", 32, True, 113.0),
                                                                  ("0.5B", 32, False, 79.3), ("1.5B", 16, True, 85.3)])
def test_training_peaks_against_the_h200_measurements(tmp_path, size, batch, four_bit, measured_gib):
    """Not a calibration (the coefficients are seq2seq's): the decoder-only features, put through them, land within
    the memory target of four measured plain-path peaks (they came out 2-14% low)."""
    (tmp_path / "config.json").write_text(json.dumps(QWEN25[size]))
    exp = causal_exp("qwen2", batch=batch, four_bit=four_bit, rank=16, prompt=512, summary=128, gc=False)
    exp.speed = exp.speed.model_copy(update={"enabled": False})  # the plain path
    f = features.features(exp, features.model_dims("qwen2", "x/y", str(tmp_path)))
    train_peak, _ = calibration.peaks(f, calibration.load_calibration("h100").coefficients)
    assert train_peak == pytest.approx(measured_gib, rel=0.2)


def test_once_the_family_is_calibrated_its_own_table_is_used(tmp_path, monkeypatch):
    """plan --calibrate on decoder-only configs writes calibration/<card>-causal_lm.json (the seq2seq table stays):
    the family's trials are planned with it, and the table no longer says they rest on seq2seq coefficients."""
    from benchmarks import fit_calibration

    seq2seq = json.loads((ROOT / "trainables" / "driver" / "calibration" / "h100.json").read_text())
    (tmp_path / "h100.json").write_text(json.dumps(seq2seq))
    monkeypatch.setattr(calibration, "CALIBRATION_DIR", tmp_path)
    card, calib, scaled = calibration.resolve_card("rtx3090")
    data = ROOT / "data"
    exp = causal_exp("qwen2")
    exp.speed = exp.speed.model_copy(update={"enabled": False})  # the configured batch either way: the peaks compare
    before = plan.forecast([exp], data, card, calib, scaled)
    own = {**seq2seq, "families": ["causal_lm"], "coefficients": {**seq2seq["coefficients"], "mem_logit": 1.0}}
    (tmp_path / "h100-causal_lm.json").write_text(json.dumps(own))
    after = plan.forecast([exp], data, card, calib, scaled)
    assert after.trials[0].peak_gib < before.trials[0].peak_gib  # planned with the family's own coefficients
    text = plan.format_forecast(after)
    assert "causal_lm: calibration h100-causal_lm.json" in text and "scaled as above" in text
    assert "not calibrated on a GPU" not in text and "not calibrated on a GPU" in plan.format_forecast(before)
    # one table holds one family: rows of both are refused, with the fix
    rows = json.loads((ROOT / "benchmarks" / "results" / "gpu_configs-2026-11-26-h100-calibrate.json").read_text())
    qwen = causal_exp("qwen2")
    exps = {e.name: e for e in load_search_space(ROOT / "search_spaces")} | {qwen.name: qwen}
    with pytest.raises(calibration.PlanError, match="several model families.*search_spaces/llm"):
        fit_calibration.fit_calibration(rows + [{**rows[0], "name": qwen.name}], exps)
