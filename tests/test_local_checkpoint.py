"""The local-checkpoint path as a new user takes it: `--mode quick --allow-cpu` with `model.checkpoint` pointing at a
model folder on disk that the project did not build (tests/foreign_checkpoints.py: a KoBART-like BART whose
tokenizer adds no special token, an mT5-like model with spare embedding rows and its own head), with the shipped
configs' shape: gradient accumulation > 1, evaluation every N steps (one falling on the epoch's end), logging
rarer than evaluation, early stopping. Tiny sizes: 16 training rows, 4 dev rows."""

from __future__ import annotations

import math

import pytest
import yaml

from tests.conftest import ROOT, run_cli, write_sample
from tests.foreign_checkpoints import build_foreign

pytestmark = pytest.mark.slow  # a Ray Tune run of two trials: a minute or more

SEEDS = {"kobart": "01_baseline_kobart_rtx3090", "mt5": "01_mt5_xlsum_ultimate"}


def _experiment(layout: str, folder) -> dict:
    exp = yaml.safe_load((ROOT / "search_spaces" / f"{SEEDS[layout]}.yaml").read_text(encoding="utf-8"))
    exp["name"] = f"local_{layout}"
    exp["model"]["checkpoint"] = str(folder)
    exp["tokenizer"].update(encoder_max_len=64, decoder_max_len=24)
    exp["training"].update(per_device_train_batch_size=2, per_device_eval_batch_size=4, gradient_accumulation_steps=2,
                           eval_steps=2, logging_steps=50, early_stopping_patience=3, gradient_checkpointing=False)
    exp["generation"].update(num_beams=2, max_length=24, min_length=1)
    exp["qlora"].update(lora_rank=4, lora_alpha=8)
    return exp


def test_quick_allow_cpu_on_foreign_model_folders(tmp_path):
    spaces, data, storage = tmp_path / "spaces", tmp_path / "data", tmp_path / "results"
    spaces.mkdir()
    data.mkdir()
    for layout in SEEDS:
        folder = build_foreign(layout, tmp_path / f"model-{layout}")
        (spaces / f"local_{layout}.yaml").write_text(yaml.safe_dump(_experiment(layout, folder), allow_unicode=True),
                                                     encoding="utf-8")
    write_sample(data, train=16, dev=4, test=2)

    proc = run_cli("--mode", "quick", "--allow-cpu", "--search-space", str(spaces), "--data-dir", str(data),
                   "--storage-path", str(storage), "--name", "local", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(storage / "local"), default_metric="competition_score", default_mode="max")
    assert {t.config["experiment"]["name"] for t in analysis.trials} == {"local_kobart", "local_mt5"}
    for trial in analysis.trials:
        frame = analysis.trial_dataframes[trial.trial_id]
        # 16 rows at 2 x 2: 4 optimizer steps in quick mode's one epoch; evaluations at steps 2 and 4 (the epoch's
        # end), each reported once, each with the mean training loss since the previous report.
        assert list(frame["step"]) == [2, 4], frame[["step", "epoch"]]
        assert frame["train_loss"].apply(math.isfinite).all() and (frame["train_loss"] > 0).all()
        assert (frame["eff_gradient_accumulation_steps"] == 2).all()
        assert frame["eff_model_source"].iloc[-1].startswith("checkpoint:")
        assert frame["competition_score"].notna().all()
