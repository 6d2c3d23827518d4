"""A packed trial that overruns its share fails alone and is retried on a whole GPU (trainables.driver.overrun, placement.py).

On CPUs: the cap a trial computes from the fraction Ray gave it (a made-up card), the in-trial back-off that stops
at the configured batch under a packed cap, and, through real Ray with a made-up GPU, the real trainable on a tiny
stand-in: a packed trial that raises the overrun error is retried with a whole GPU and finishes from its last
checkpoint, recording the re-placement; a trial failing with another error keeps its fraction."""

from __future__ import annotations

import json
from dataclasses import asdict
from argparse import Namespace
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.fault_injection import callback_spec
from tests import test_models
from tests.test_models import CPU, small_trial_exp
from trainables.trial import placement
from trainables.config import Placement

OVERRUN, OTHER = "overrun_trial", "other_error_trial"
configs, standins, tiny_data = test_models.configs, test_models.standins, test_models.tiny_data  # shared fixtures


# ---------------------------------------------------------------------------------------------------
# The cap from a fraction, and from the fraction Ray gave


def test_cap_for_a_fraction_of_made_up_cards():
    assert placement.cap_for_fraction(0.5, 80.0) == pytest.approx(40.0 - placement.CONTEXT_GIB)
    assert placement.cap_for_fraction(0.25, 23.7) == pytest.approx(0.25 * 23.7 - placement.CONTEXT_GIB, abs=0.01)
    assert placement.cap_for_fraction(1.0, 80.0) is None  # a whole card: uncapped


@pytest.fixture
def fake_80gib_card(monkeypatch):
    """torch sees an 80 GiB CUDA card; the caps set on it are recorded."""
    import torch

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Namespace(total_memory=80 * 2**30, name="fake"))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device=None: calls.append(f))
    return calls


def test_trial_caps_itself_from_the_fraction_ray_gave(fake_80gib_card):
    placed = Placement(gpu=0.25, memory_cap_gib=19.2, predicted_peak_gib=16.0, predicted_trial_s=9.0)
    as_planned = placement.apply_memory_cap(placed, granted=0.25)
    assert fake_80gib_card == [pytest.approx(19.2 / 80)] and as_planned["eff_packed"] and not as_planned["eff_replaced"]

    whole = placement.apply_memory_cap(placed, granted=1.0)  # the retry after an overrun
    assert len(fake_80gib_card) == 1, "a whole GPU: no cap"
    assert whole["eff_gpu_fraction"] == 1.0 and whole["eff_memory_cap_gib"] is None and not whole["eff_packed"]
    assert whole["eff_replaced"] and "re-placed after overrunning" in placement.replacement_note(placed, whole)

    more = placement.apply_memory_cap(placed, granted=0.5)  # more of the card, not all of it: the cap follows Ray's share
    assert more["eff_memory_cap_gib"] == pytest.approx(0.5 * 80 - placement.CONTEXT_GIB) and more["eff_replaced"]
    assert placement.apply_memory_cap(placed)["eff_gpu_fraction"] == 0.25  # outside Ray: the plan's fraction


def test_outside_a_tune_trial_no_fraction_is_granted():
    assert placement.granted_gpu_fraction() is None


# ---------------------------------------------------------------------------------------------------
# Inside the trial: the back-off under a packed cap stops at the configured batch


def _oom_every_time(tried):
    import torch

    def train_once(settings, resume):
        tried.append((settings.train_batch_size, settings.gradient_accumulation_steps))
        raise torch.OutOfMemoryError("CUDA out of memory (test)")

    return train_once


def test_packed_trial_out_of_memory_at_its_configured_batch_raises_the_overrun(configs, tmp_path):
    from dataclasses import replace

    from trainables.trial import speed
    from trainables.trial.backoff import retry_on_oom
    from trainables.trial.models import decide_settings

    exp = small_trial_exp(configs, gradient_accumulation_steps=4)  # configured 8 x 4
    speed_plan = speed.decide(exp, (8, 4), cuda=True)  # larger micro-batches first: 32 x 1, 16 x 2, then 8 x 4
    bs, accum = speed_plan.first_micro_batch
    settings = replace(decide_settings(exp, CPU, "standin"), train_batch_size=bs, gradient_accumulation_steps=accum)
    packed = {"eff_gpu_fraction": 0.25, "eff_memory_cap_gib": 19.2, "eff_packed": True, "eff_predicted_peak_gib": 16.0}
    tried = []
    with pytest.raises(placement.PackedTrialOverrun, match=r"overran its planned share.*retried on the\s+whole GPU") as err:
        retry_on_oom(_oom_every_time(tried), settings, speed_plan, str(tmp_path), None, "exp", packed=packed)
    assert tried == [(32, 1), (16, 2), (8, 4)], "the micro-batch back-off still steps down under the cap"
    assert "19.2 GiB" in str(err.value) and "8 x 4" in str(err.value)

    tried = []  # not packed: the plain back-off halves on down to batch 1
    with pytest.raises(RuntimeError, match="even at per-device batch 1"):
        retry_on_oom(_oom_every_time(tried), settings, speed_plan, str(tmp_path), None, "exp")
    assert [b for b, _ in tried] == [32, 16, 8, 4, 2, 1]


# ---------------------------------------------------------------------------------------------------
# Through Ray, with a made-up GPU: the retry gets a whole GPU, another failure keeps its fraction


def _results(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


@pytest.mark.slow  # Ray and four trial processes of a tiny stand-in: about a minute on 2 cores
def test_overrun_trial_retries_on_a_whole_gpu_and_other_failures_keep_their_share(
        configs, standins, tiny_data, tmp_path, monkeypatch):
    import ray

    from trainables.config import RunContext
    from trainables.driver.grid import GridPlan, build_tuner
    from trainables.process import worker_env

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    base = small_trial_exp(configs, num_train_epochs=2)  # 16 rows, batch 8: epochs end at steps 2 and 4
    exps = [base.model_copy(update={"name": n}) for n in (OVERRUN, OTHER)]
    marker = tmp_path / "other-failed.txt"
    run = RunContext(
        mode="smoke", data_dir=str(tiny_data), torch_threads=1, environment=asdict(CPU),
        models={base.model.checkpoint: {"model_path": standins("bart"), "model_source": "standin:test"}},
        placement={n: Placement(gpu=0.45, memory_cap_gib=30.0, predicted_peak_gib=25.0) for n in (OVERRUN, OTHER)},
        callbacks=[callback_spec(overrun_after_epoch=1, only=OVERRUN),
                   callback_spec(fail_once_after_epoch=1, marker=str(marker), only=OTHER)],
    )
    grid = GridPlan(experiments=exps, run=run, storage_path=tmp_path / "results", name="overrun", use_gpu=True,
                    max_concurrent=2, max_failures=1)
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {**worker_env("smoke"), "PYTHONPATH": str(ROOT)}})
    try:
        results = build_tuner(grid).fit()
    finally:
        ray.shutdown()
    assert not results.errors, results.errors
    trial_dirs = {json.loads((d / "params.json").read_text())["experiment"]["name"]: d
                  for d in (tmp_path / "results" / "overrun").iterdir() if (d / "params.json").exists()}

    overrun = _results(trial_dirs[OVERRUN])
    assert [r["step"] for r in overrun] == [2, 4], "the retry resumed from its checkpoint at step 2"
    first, retried = overrun
    assert first["eff_gpu_fraction"] == 0.45 and not first["eff_replaced"]
    assert retried["eff_gpu_fraction"] == 1.0 and retried["eff_replaced"] and retried["eff_memory_cap_gib"] is None
    assert "re-placed after overrunning its packed share: planned 0.45" in retried["eff_notes"]
    error = (trial_dirs[OVERRUN] / "error.txt").read_text()
    assert "PackedTrialOverrun:" in error and "overran its planned share" in error

    other = _results(trial_dirs[OTHER])
    assert marker.exists() and (trial_dirs[OTHER] / "error.txt").exists(), "the other trial failed once"
    assert [r["step"] for r in other] == [2, 4]
    assert all(r["eff_gpu_fraction"] == 0.45 and not r["eff_replaced"] for r in other), "another error: same share"
