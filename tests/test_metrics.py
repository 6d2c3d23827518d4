"""Tests for trainables.metrics (Korean ROUGE matching the competition)."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from trainables.metrics import (
    DEFAULT_TOKENIZATION,
    TOKENIZATIONS,
    KoreanRouge,
    clean_summary,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
KEYS = ("rouge1", "rouge2", "rougeL")


@pytest.fixture(scope="module")
def ws() -> KoreanRouge:
    return KoreanRouge("whitespace")


@pytest.fixture(scope="module")
def morph() -> KoreanRouge:
    pytest.importorskip("kiwipiepy")
    return KoreanRouge("morpheme")


# --------------------------------------------------------------- constants / API


def test_default_scorer_and_config_agree_on_tokenizations(ws):
    """The default scorer scores as the default tokenization does, and a config accepts exactly the metric's
    tokenizations (the two lists can't drift apart)."""
    from typing import get_args

    from trainables.config import MetricSection

    pred, ref = ["#Person1#은 사과를 샀다."], ["#Person1#이 사과를 먹었다."]
    assert KoreanRouge().score(pred, ref) == KoreanRouge(DEFAULT_TOKENIZATION).score(pred, ref) == ws.score(pred, ref)
    assert set(get_args(MetricSection.model_fields["tokenization"].annotation)) == set(TOKENIZATIONS)
    assert MetricSection().tokenization == DEFAULT_TOKENIZATION


def test_invalid_tokenization_names_valid_choices():
    with pytest.raises(ValueError) as info:
        KoreanRouge("mecab")
    message = str(info.value)
    assert "mecab" in message and "whitespace" in message and "morpheme" in message


def test_module_import_is_light():
    code = (
        "import sys, trainables.metrics\n"
        "heavy = [m for m in ('torch', 'transformers', 'rouge_score', 'kiwipiepy', 'rouge')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_missing_kiwipiepy_gives_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "kiwipiepy", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install kiwipiepy"):
        KoreanRouge("morpheme")


# --------------------------------------------------------------- clean_summary


def test_clean_summary_removes_special_tokens_keeps_tags():
    raw = "<s> #Person1#은   #PhoneNumber#로\n전화했다</s>다음 날.</s><pad><pad>\n"
    cleaned = clean_summary(raw, ["<pad>", "</s>", "<s>"])
    assert cleaned == "#Person1#은 #PhoneNumber#로 전화했다 다음 날."


def test_clean_summary_edge_cases():
    # no tokens: only whitespace handling
    assert clean_summary("  가\t나\n\n다  ") == "가 나 다"
    # a single string is one token, not a set of characters
    assert clean_summary("<pad>파도<pad>", "<pad>") == "파도"
    # empty strings are ignored (replacing "" would insert spaces everywhere)
    assert clean_summary("사과를 샀다", ["", "<unk>"]) == "사과를 샀다"
    assert clean_summary("<unk>", ["<unk>"]) == ""


# --------------------------------------------------------------- whitespace mode


def test_whitespace_tokens_split_periods_like_the_rouge_package(ws):
    assert ws.tokenize("#Person1#은 사과를 샀다.") == ["#Person1#은", "사과를", "샀다"]
    assert ws.tokenize("가격은 3.5 달러.\n끝") == ["가격은", "3", "5", "달러", "끝"]
    # so a final period does not break a match
    assert ws.score(["사과를 샀다."], ["사과를 샀다"])["rouge1"] == 1.0


def test_identical_korean_is_one(ws):
    text = "#Person1#은 #Person2#에게 내일 병원에 같이 가자고 제안한다."
    scores = ws.score([text], [text])
    assert scores == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "competition_score": 100.0}


def test_disjoint_is_zero(ws):
    scores = ws.score(["민수는 사과를 샀다"], ["지민이 병원에 갔다"])
    assert scores == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "competition_score": 0.0}


def test_shared_speaker_tag_only(ws):
    # whitespace tokens: [#Person1#은, 사과를, 샀다] vs [#Person1#은, 병원에, 갔다]
    # rouge1: 1 shared of 3 each -> P = R = 1/3 -> F = 1/3
    # rouge2: no shared bigram -> 0;  rougeL: LCS = 1 -> 1/3
    # competition_score = (1/3 + 0 + 1/3) / 3 * 100 = 200/9 = 22.222...
    scores = ws.score(["#Person1#은 사과를 샀다"], ["#Person1#은 병원에 갔다"])
    assert scores["rouge1"] == pytest.approx(1 / 3, abs=1e-12)
    assert scores["rouge2"] == 0.0
    assert scores["rougeL"] == pytest.approx(1 / 3, abs=1e-12)
    assert scores["competition_score"] == pytest.approx(200 / 9, abs=1e-9)


@pytest.mark.parametrize("empty", ["", "   ", "\n", "."])
def test_empty_prediction_or_reference_is_zero(ws, empty):
    ref = "#Person1#은 사과를 샀다."
    for preds, refs in (([empty], [ref]), ([ref], [empty]), ([empty], [empty])):
        scores = ws.score(preds, refs)
        assert all(math.isfinite(v) for v in scores.values())
        assert scores == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "competition_score": 0.0}


def test_empty_pair_counts_as_zero_in_the_mean(ws):
    text = "#Person2#는 영화표를 두 장 예매했다."
    scores = ws.score([text, ""], [text, text])
    for key in KEYS:
        assert scores[key] == pytest.approx(0.5)
    assert ws.score([text], [[]])["rouge1"] == 0.0  # no reference at all


def test_length_mismatch_and_empty_input_raise(ws):
    with pytest.raises(ValueError):
        ws.score(["가", "나"], ["가"])
    with pytest.raises(ValueError):
        ws.score([], [])
    with pytest.raises(TypeError):
        ws.score("가 나", "가 나")
    with pytest.raises(TypeError):
        ws.score(["가 나"], [None])


# --------------------------------------------------------------- multi-reference


def test_multi_reference_is_mean_not_max(ws):
    pred = "민수는 시장에서 사과를 샀다"
    refs = [
        "민수는 시장에서 사과를 샀다",  # 1, 1, 1
        "민수는 시장에서 배를 팔았다",  # r1 2/4 = .5; r2 1 of 3 bigrams -> 1/3; rL LCS 2 -> .5
        "지민이 병원에 갔다 왔다",  # 0, 0, 0
    ]
    scores = ws.score([pred], [refs])
    # mean over the three references (max would be 1.0 everywhere)
    assert scores["rouge1"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert scores["rouge2"] == pytest.approx((1 + 1 / 3 + 0) / 3)  # 4/9
    assert scores["rougeL"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert scores["rouge1"] < 1.0


def test_single_reference_list_equals_string(ws):
    preds = ["#Person1#은 사과를 샀다.", "#Person2#는 집에 갔다."]
    refs = ["#Person1#은 사과를 많이 샀다.", "#Person2#는 학교에 갔다."]
    assert ws.score(preds, refs) == ws.score(preds, [[r] for r in refs])
    assert ws.score(preds, refs) == ws.score(preds, [(r,) for r in refs])


def test_competition_score_is_mean_times_100(ws):
    preds = ["#Person1#은 사과를 샀다.", "#Person2#는 집에 일찍 갔다.", "둘은 영화를 봤다."]
    refs = [
        ["#Person1#은 시장에서 사과를 샀다.", "#Person1#이 사과를 샀다."],
        "#Person2#는 집에 갔다.",
        ["둘은 함께 영화를 봤다.", "#Person1#과 #Person2#는 영화를 봤다.", "영화를 봤다."],
    ]
    scores = ws.score(preds, refs)
    assert 0 < scores["rouge2"] < scores["rouge1"] < 1
    expected = (scores["rouge1"] + scores["rouge2"] + scores["rougeL"]) / 3 * 100
    assert scores["competition_score"] == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------- vs the `rouge` package (pltrdy)

VOCAB = [
    "#Person1#은", "#Person2#는", "#Person1#에게", "#Person2#의", "#PhoneNumber#로",
    "민수는", "지민이", "오늘", "내일", "어제", "시장에서", "병원에", "학교에서",
    "사과를", "배를", "우유를", "책을", "영화를", "함께", "같이", "일찍", "늦게",
    "샀다", "팔았다", "갔다", "봤다", "읽었다", "먹었다", "전화했다", "약속했다",
    "친구와", "엄마에게", "선물을", "두", "세", "장을", "예약을", "취소했다",
    "버스를", "탔다",
]


def _make_pair(rng: random.Random, multi_sentence: bool) -> tuple[str, str]:
    """A (prediction, reference) pair with no word repeated inside either text."""
    ref_words = rng.sample(VOCAB, rng.randint(4, 12))
    unused = [w for w in VOCAB if w not in ref_words]
    rng.shuffle(unused)
    pred_words = []
    for word in ref_words:
        roll = rng.random()
        if roll < 0.25:
            continue  # dropped
        if roll < 0.4:
            pred_words.append(unused.pop())  # substituted
        else:
            pred_words.append(word)
        if rng.random() < 0.15:
            pred_words.append(unused.pop())  # inserted
    if len(pred_words) > 2 and rng.random() < 0.5:
        i = rng.randrange(len(pred_words) - 1)
        pred_words[i], pred_words[i + 1] = pred_words[i + 1], pred_words[i]
    if not pred_words:
        pred_words = [unused.pop()]

    def render(words: list[str]) -> str:
        if not multi_sentence or len(words) < 3:
            return " ".join(words) + "."
        cut = rng.randint(1, len(words) - 1)
        return " ".join(words[:cut]) + ". " + " ".join(words[cut:]) + "."

    return render(pred_words), render(ref_words)


def _pairs(multi_sentence: bool, n: int = 10, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(1000 * seed + multi_sentence)
    return [_make_pair(rng, multi_sentence) for _ in range(n)]


SINGLE = _pairs(multi_sentence=False)
MULTI = _pairs(multi_sentence=True)


def test_generated_pairs_are_not_degenerate():
    r1 = []
    for pred, ref in SINGLE + MULTI:
        p, r = pred.replace(".", " ").split(), ref.replace(".", " ").split()
        assert len(set(p)) == len(p) and len(set(r)) == len(r)
        r1.append(len(set(p) & set(r)) / max(len(p), len(r)))
    assert sum(0 < x < 1 for x in r1) >= 12
    assert sum(". " in pred or ". " in ref for pred, ref in MULTI) >= 8


def test_agrees_with_rouge_package_rouge1_rouge2(ws):
    rouge = pytest.importorskip("rouge")
    pltrdy = rouge.Rouge()
    pairs = SINGLE + MULTI
    for pred, ref in pairs:
        theirs = pltrdy.get_scores([pred], [ref], avg=True)
        ours = ws.score([pred], [ref])
        assert ours["rouge1"] == pytest.approx(theirs["rouge-1"]["f"], abs=1e-6), (pred, ref)
        assert ours["rouge2"] == pytest.approx(theirs["rouge-2"]["f"], abs=1e-6), (pred, ref)
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    theirs = pltrdy.get_scores(preds, refs, avg=True)
    ours = ws.score(preds, refs)
    assert ours["rouge1"] == pytest.approx(theirs["rouge-1"]["f"], abs=1e-6)
    assert ours["rouge2"] == pytest.approx(theirs["rouge-2"]["f"], abs=1e-6)
    assert 0.05 < ours["rouge2"] < ours["rouge1"] < 0.95


def test_agrees_with_rouge_package_rougeL_on_single_sentences(ws):
    rouge = pytest.importorskip("rouge")
    pltrdy = rouge.Rouge()
    for pred, ref in SINGLE:
        theirs = pltrdy.get_scores([pred], [ref], avg=True)["rouge-l"]["f"]
        assert ws.score([pred], [ref])["rougeL"] == pytest.approx(theirs, abs=1e-6), (pred, ref)


def test_known_difference_rougeL_multi_sentence(ws):
    # The rouge package's rouge-l is summary-level (union LCS per '.'-sentence),
    # blind to sentence order; ours is the LCS of the whole token sequences.
    pred = "민수는 사과를 샀다. 지민은 병원에 갔다."
    ref = "지민은 병원에 갔다. 민수는 사과를 샀다."
    ours = ws.score([pred], [ref])
    assert ours["rouge1"] == 1.0
    # bigrams: 4 of 5 shared (only "샀다 지민은" / "갔다 민수는" differ) -> 0.8
    assert ours["rouge2"] == pytest.approx(0.8)
    # LCS of the 6-token sequences = 3 ("지민은 병원에 갔다") -> 3/6 = 0.5
    assert ours["rougeL"] == pytest.approx(0.5)
    rouge = pytest.importorskip("rouge")
    theirs = rouge.Rouge().get_scores([pred], [ref], avg=True)
    assert theirs["rouge-l"]["f"] == pytest.approx(1.0, abs=1e-6)
    assert theirs["rouge-2"]["f"] == pytest.approx(0.8, abs=1e-6)


def test_known_difference_repeated_ngrams(ws):
    # ROUGE counts occurrences (clipped); the rouge package counts distinct n-grams.
    # tokens [가, 가, 나] vs [가, 나, 나]: overlap = min(2,1) + min(1,2) = 2 of 3 -> 2/3
    ours = ws.score(["가 가 나"], ["가 나 나"])
    assert ours["rouge1"] == pytest.approx(2 / 3)
    rouge = pytest.importorskip("rouge")
    theirs = rouge.Rouge().get_scores(["가 가 나"], ["가 나 나"], avg=True)
    assert theirs["rouge-1"]["f"] == pytest.approx(1.0, abs=1e-6)  # sets {가, 나} = {가, 나}


# --------------------------------------------------------------- morpheme mode


@pytest.mark.slow  # loads the Korean analyzer (~10 s)
def test_morpheme_identical_is_one(morph):
    text = "#Person1#은 #Person2#에게 내일 병원에 같이 가자고 제안한다."
    assert morph.score([text], [text]) == {
        "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "competition_score": 100.0,
    }


@pytest.mark.slow  # loads the Korean analyzer (~10 s)
def test_morpheme_keeps_tags_as_tokens(morph):
    tokens = morph.tokenize("#Person1#은 #Person2#에게 #PhoneNumber#로 전화하라고 했다.")
    assert tokens[:2] == ["#Person1#", "은"]
    for tag in ("#Person1#", "#Person2#", "#PhoneNumber#"):
        assert tag in tokens
    assert [t for t in tokens if "#" in t] == ["#Person1#", "#Person2#", "#PhoneNumber#"]
    assert morph.tokenize("") == [] and morph.tokenize("  ") == []


def _f1_multiset(pred: list[str], ref: list[str]) -> float:
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if not overlap:
        return 0.0
    p, r = overlap / len(pred), overlap / len(ref)
    return 2 * p * r / (p + r)


@pytest.mark.slow  # loads the Korean analyzer (~10 s)
def test_morpheme_beats_whitespace_when_particles_differ(morph, ws):
    pred, ref = "사과를 먹었다", "사과가 맛있다"
    assert ws.score([pred], [ref])["rouge1"] == 0.0  # no whitespace token in common
    got = morph.score([pred], [ref])["rouge1"]
    # kiwi: [사과, 를, 먹, 었, 다] vs [사과, 가, 맛있, 다] -> 2 shared -> F = 4/9
    assert got == pytest.approx(_f1_multiset(morph.tokenize(pred), morph.tokenize(ref)))
    assert "사과" in morph.tokenize(pred) and "사과" in morph.tokenize(ref)
    assert got > 0.3


@pytest.mark.slow  # loads the Korean analyzer (~10 s)
def test_morpheme_batched_analysis_matches_single(morph):
    texts = [
        "#Person1#은 사과를 샀다.",
        "#Person2#는 병원에 갔다 왔다.",
        "둘은 내일 #Address#에서 만나기로 했다.",
        "",
        "#Person1#이 #Person2#에게 전화번호 #PhoneNumber#를 알려준다.",
    ]
    morph.clear_cache()  # nothing analysed by an earlier test
    scores = morph.score(texts, list(reversed(texts)))  # one batched analysis
    assert math.isfinite(scores["competition_score"])
    alone = KoreanRouge("morpheme")  # asked one text at a time: each is analysed by itself
    for text in texts:
        assert morph.tokenize(text) == alone.tokenize(text)
