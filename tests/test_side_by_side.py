"""The side-by-side benchmark's CPU dry run: tiny stand-ins, both sides, one config (tests the script, not speed)."""

from __future__ import annotations

import json

import pytest

from benchmarks import side_by_side


@pytest.mark.slow
def test_side_by_side_dry_run_measures_both_sides(tmp_path):
    from transformers.generation.utils import GenerationMixin

    original = GenerationMixin.generate
    rc = side_by_side.main(["--tiny", "--only", "01_baseline_kobart_rtx3090", "--steps", "1",
                            "--baseline-eval-batches", "1", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    # Found in CI: the benchmark's length-forcing generate() stayed installed, and a later test's predictions in the
    # same process (inputs matching no benchmark dialogue) were kept from EOS and ran to max_length.
    assert GenerationMixin.generate is original
    [row] = json.loads((tmp_path / "side_by_side.json").read_text())
    for side in ("baseline", "project"):
        r = row[side]
        assert "error" not in r, r.get("error")
        assert r["unforced_generation_rows"] == 0  # every generated row got its forced length, whatever the framing
        assert r["train_tok_s"] > 0 and r["train_steps_measured"] == 1
        assert r["eval_s_full"] > 0 and r["projection"]["steps"] > 0 and r["projection"]["evaluations"] > 0
    assert row["project"]["eff"]["eff_speed_enabled"] is True
    assert row["project"]["eff"]["eff_speed_eval_merged"].startswith("yes")
    assert row["project"]["eff"]["eff_speed_chunked_loss"] is False  # off by default: it measured no memory saving
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



def test_rows_matching_no_benchmark_dialogue_generate_freely():
    """The forcing only touches rows whose input is a benchmark dev dialogue; any other row keeps its scores."""
    import torch
    from transformers.generation.utils import GenerationMixin

    seen = {}
    original = GenerationMixin.generate
    GenerationMixin.generate = lambda model, *a, **kw: seen.setdefault("processors", kw["logits_processor"])
    try:
        probe = side_by_side.Probe().install()
        probe.lengths = {(5, 6, 7): 2}
        model = type("M", (), {"generation_config": type("G", (), {"eos_token_id": 1})()})()
        ids = torch.tensor([[5, 6, 7], [8, 9, 9]])
        GenerationMixin.generate(model, input_ids=ids, attention_mask=torch.ones_like(ids))
        probe.uninstall()
    finally:
        GenerationMixin.generate = original
    [forcing] = seen["processors"]
    scores = forcing(torch.zeros(2, 2), torch.zeros(2, 4))  # start + one token made: row 0 (length 2) may not stop yet
    assert scores[0, 1] == -float("inf") and torch.equal(scores[1], torch.zeros(4)) and probe.misses == 1
    scores = forcing(torch.zeros(2, 3), torch.zeros(2, 4))  # two made: row 0 must stop; row 1 still free
    assert scores[0, 1] == 0 and (scores[0, [0, 2, 3]] == -float("inf")).all() and torch.equal(scores[1], torch.zeros(4))
