"""When a trial trains through Unsloth, and why not: every fallback reason, decided on the CPU (Unsloth itself
needs a CUDA GPU; its path is measured on one in benchmarks/llm_side_by_side.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from trainables.config import load_experiment
from trainables.trial import unsloth
from trainables.trial.models import Environment, decide_settings

LLM = sorted((ROOT / "search_spaces" / "llm").glob("*.yaml"))
SEQ2SEQ = sorted((ROOT / "search_spaces").glob("*.yaml"))


def _config(path: Path, **qlora):
    exp = load_experiment(path)
    return exp.model_copy(update={"qlora": exp.qlora.model_copy(update={"use_unsloth": True, **qlora})})


def _gpu(installed: bool = True) -> Environment:
    return Environment(cuda=True, bf16_supported=True, device_name="NVIDIA H200", unsloth_installed=installed,
                       bitsandbytes_installed=True)


def test_a_decoder_only_config_on_a_gpu_with_unsloth_uses_it():
    exp = _config(LLM[0])
    decision = unsloth.decide(exp, "causal_lm", cuda=True, installed=True)
    assert decision.use and decision.reason.startswith("FastLanguageModel")


@pytest.mark.parametrize("case, expected", [
    ("not requested", "not requested"),
    ("encoder-decoder", "no encoder-decoder fast path"),
    ("no gpu", "no CUDA GPU"),
    ("not installed", "unsloth not installed"),
    ("transformers first", "transformers was imported before unsloth"),
    ("fp4", "NF4 only"),
    ("no double quant", "double quantization"),
    ("full fine-tuning", "full fine-tuning"),
])
def test_each_reason_it_cannot_run_is_recorded(case, expected):
    path, family, cuda, installed, first, qlora = LLM[-1], "causal_lm", True, True, False, {}
    if case == "not requested":
        qlora = {"use_unsloth": False}
    elif case == "encoder-decoder":
        path, family = SEQ2SEQ[0], "seq2seq"
    elif case == "no gpu":
        cuda = False
    elif case == "not installed":
        installed = False
    elif case == "transformers first":
        first = True
    elif case == "fp4":
        qlora = {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"}
    elif case == "no double quant":
        qlora = {"load_in_4bit": True, "bnb_4bit_use_double_quant": False}
    elif case == "full fine-tuning":
        qlora = {"use_qlora": False}
    decision = unsloth.decide(_config(path, **qlora), family, cuda=cuda, installed=installed, transformers_first=first)
    assert not decision.use
    assert expected in decision.reason, decision.reason
    if case != "not requested":
        assert decision.reason.endswith(("plain transformers + peft", "plain transformers + peft + bitsandbytes"))


def test_the_trial_records_the_fallback_on_this_cpu():
    """What every CPU trial (CI, smoke) records: eff_unsloth false, the reason, and a note."""
    settings = decide_settings(_config(LLM[0]), Environment.probe(), "standin")
    record = settings.as_metrics()
    assert record["eff_unsloth"] is False
    assert "no CUDA GPU" in record["eff_unsloth_reason"]
    assert "unsloth off: no CUDA GPU" in record["eff_notes"]


def test_a_seq2seq_config_never_routes_through_unsloth_even_on_a_gpu():
    settings = decide_settings(_config(SEQ2SEQ[0]), _gpu(), "standin")
    assert settings.unsloth is False and "encoder-decoder" in settings.unsloth_reason


def test_the_trial_entry_and_the_driver_import_no_transformers():
    """Unsloth must be imported before transformers in a trial's process: the entry point Ray unpickles, the config
    and the family registry it reads first, and the driver's modules import neither transformers nor unsloth."""
    code = ("import sys, trainables.trial.entry, trainables.trial.unsloth, trainables.trial.families, "
            "trainables.driver.grid, trainables.driver.launch; "
            "print(sorted(m for m in ('transformers', 'unsloth', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
