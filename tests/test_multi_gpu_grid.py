"""The packed-grid benchmark's CPU dry run: tiny stand-ins, a made-up GPU in Ray, two configs one at a time and
packed (tests the script and that the plan's placement reaches each trial, not speed)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow  # Ray and four trial processes: about 80 s on 2 cores
def test_one_at_a_time_against_packed_on_a_made_up_gpu(tmp_path, monkeypatch, standin_cache):
    from benchmarks import multi_gpu_grid

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")
    out = tmp_path / "grid.json"
    rc = multi_gpu_grid.main(["--tiny", "--made-up-gpus", "1", "--steps", "1", "--only", "01_baseline_kobart_rtx3090",
                              "03_high_learning_rate_rtx3090", "--cache-dir", str(standin_cache), "--out", str(out)])
    assert rc == 0
    summary = json.loads(out.read_text())
    alone, packed = summary["passes"]["one_at_a_time"], summary["passes"]["packed"]
    assert alone["max_concurrent"] == 1 and packed["max_concurrent"] == 2
    assert alone["order"] == packed["order"] and len(packed["order"]) == 2  # the plan's longest-first order
    for name in packed["order"]:
        a, p = alone["trials"][name], packed["trials"][name]
        assert a["ok"] and p["ok"], (a["error"], p["error"])
        assert a["eff_gpu_fraction"] == 1.0 and 0 < p["eff_gpu_fraction"] < 1, "the trial recorded Ray's share"
        assert not p["eff_replaced"]
        assert p["train_losses"] == pytest.approx(a["train_losses"]) and p["eval_loss"] == pytest.approx(a["eval_loss"])
    assert summary["speedup"]["packed"] > 0
