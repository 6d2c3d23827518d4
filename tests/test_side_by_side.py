"""The side-by-side benchmark's CPU dry run: tiny stand-ins, both sides, one config (tests the script, not speed)."""

from __future__ import annotations

import json

import pytest

from benchmarks import side_by_side


@pytest.mark.slow
def test_side_by_side_dry_run_measures_both_sides(tmp_path):
    rc = side_by_side.main(["--tiny", "--only", "01_baseline_kobart_rtx3090", "--steps", "1",
                            "--baseline-eval-batches", "1", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    [row] = json.loads((tmp_path / "side_by_side.json").read_text())
    for side in ("baseline", "project"):
        r = row[side]
        assert "error" not in r, r.get("error")
        assert r["train_tok_s"] > 0 and r["train_steps_measured"] == 1
        assert r["eval_s_full"] > 0 and r["projection"]["steps"] > 0 and r["projection"]["evaluations"] > 0
    assert row["project"]["eff"]["eff_speed_enabled"] is True
    assert row["project"]["eff"]["eff_speed_eval_merged"].startswith("yes")
    # both sides trained the same number of label tokens per optimizer step (same effective batch)
    assert row["baseline"]["train_label_tokens"] > 0 and row["project"]["train_label_tokens"] > 0
    assert "same_predictions" in row and row["data"]["dev_rows"] == 12


def test_forced_lengths_are_drawn_from_the_distribution():
    pairs = side_by_side.draw_lengths(2000, (280, 0.45, 1200), (58, 12, 30, 110), seed=0)
    dialogues = sorted(d for d, _ in pairs)
    summaries = [s for _, s in pairs]
    assert 230 < dialogues[1000] < 330 and dialogues[-1] <= 1200 and dialogues[1900] > 500  # a long tail
    assert 30 <= min(summaries) and max(summaries) <= 110 and 50 < sum(summaries) / len(summaries) < 66


def test_projection_counts_steps_and_evaluations():
    exp = {"training": {"num_train_epochs": 8, "eval_steps": 100}}
    p = side_by_side.project_full_run(exp, 4, 4, tok_s=1000.0, eval_s_full=60.0, label_tokens_mean=50.0)
    per_epoch = -(-12457 // 4) // 4
    assert p["steps"] == per_epoch * 8
    assert p["evaluations"] == len({per_epoch * (e + 1) for e in range(8)} | set(range(100, p["steps"] + 1, 100)))
    assert p["total_h"] == pytest.approx((12457 * 8 * 50 / 1000 + p["evaluations"] * 60) / 3600, abs=1e-3)
