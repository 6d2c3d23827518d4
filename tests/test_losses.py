"""The chunked cross-entropy (trainables/trial/speed/losses.py, speed `chunked_loss`, off by default) against
F.cross_entropy on an fp32 copy of the logits, what the plain path computes.

Measured bounds (CPU, vocabulary 1,000, 21 rows in chunks of 4, five seeds):
- fp32 logits: summed loss within 1.3e-7 relative, gradient within 2.4e-7 absolute (largest element 0.37).
- bf16 / fp16 logits, against the fp32 computation on the same half-precision values: loss within 1.5e-7
  relative; the gradient, in the logits' dtype, equals the fp32 reference's gradient cast to that dtype except
  for at most 7 of 21,000 elements per seed, each by at most one unit in its last place (fp32 values ~1e-7 apart
  rounding to either side of a half-precision step). The tests allow one unit in the last place and 0.1% of the
  elements differing.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.test_accumulation import accumulation_exp, eight_rows, first_step, relative_difference  # noqa: F401
from tests.test_models import build, configs, smoke_exp, standins  # noqa: F401
from trainables.trial import speed
from trainables.trial.recipe import loss_function, plain_cross_entropy, token_mean_loss
from trainables.trial.speed import losses
from trainables.trial.speed.evaluate import dev_loss

V, ROWS = 1000, 4  # 3 x 7 = 21 rows: six chunks, the last one partial


def _case(dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(3, 7, V, generator=gen) * 4).to(dtype)
    labels = torch.randint(0, V, (3, 7), generator=gen)
    labels[0, -3:] = -100  # padding at the end of a row
    labels[2, 0] = -100
    return logits, labels


def _plain(logits, labels, grad_output):
    """The plain path on the same values: fp32 copy, F.cross_entropy summed; the gradient w.r.t. the fp32 values."""
    x = logits.detach().float().requires_grad_()
    loss = F.cross_entropy(x.reshape(-1, V), labels.reshape(-1), ignore_index=-100, reduction="sum")
    loss.backward(grad_output)
    return loss.detach(), x.grad


def _chunked(logits, labels, grad_output):
    x = logits.detach().clone().requires_grad_()
    loss = losses.chunked_cross_entropy(x, labels, rows=ROWS)
    loss.backward(grad_output)
    return loss.detach(), x.grad


@pytest.mark.parametrize("seed", range(5))
def test_fp32_loss_and_gradient_equal_plain_cross_entropy(seed):
    logits, labels = _case(torch.float32, seed)
    g = torch.tensor(0.37)  # as token_mean_loss's division by the batch's tokens scales it
    want_loss, want_grad = _plain(logits, labels, g)
    loss, grad = _chunked(logits, labels, g)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    assert loss == pytest.approx(float(want_loss), rel=1e-6)
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=1e-6)
    assert not grad[0, -3:].any() and not grad[2, 0].any()  # ignored rows: no gradient


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seed", range(5))
def test_half_precision_logits_loss_and_gradient_equal_the_fp32_computation(dtype, seed):
    logits, labels = _case(dtype, seed)
    g = torch.tensor(0.37)
    want_loss, want_grad = _plain(logits, labels, g)
    loss, grad = _chunked(logits, labels, g)
    assert loss.dtype == torch.float32 and grad.dtype == dtype  # the gradient in the logits' own dtype
    assert loss == pytest.approx(float(want_loss), rel=1e-6)
    reference = want_grad.to(dtype).float()
    info = torch.finfo(dtype)
    ulp = reference.abs().clamp_min(info.smallest_normal) * info.eps  # one unit in the last place (subnormals too)
    assert ((grad.float() - reference).abs() <= ulp).all()
    assert (grad.float() != reference).sum() <= grad.numel() // 1000
    assert not grad[0, -3:].any() and not grad[2, 0].any()


def test_per_token_dev_loss_equals_plain_cross_entropy():
    logits, labels = _case(torch.bfloat16, 0)
    want = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    got = losses.token_cross_entropy(logits, labels, rows=ROWS)
    assert got.shape == labels.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def _largest_allocation(loss_fn, logits) -> int:
    """Bytes of the largest single CPU allocation made by one forward and backward pass of `loss_fn`."""
    from torch.profiler import ProfilerActivity, profile

    x = logits.detach().clone().requires_grad_()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss_fn(x).backward()
    return max(e.cpu_memory_usage for e in prof.events())


def test_no_full_size_fp32_tensor_is_made():
    """bf16 logits (64 rows x 2,000): the plain path allocates the full fp32 copy; the chunked one at most the
    gradient in bf16 (half the fp32 size) and chunks of 8 fp32 rows."""
    rows, vocab = 64, 2000
    logits = torch.randn(rows, vocab).bfloat16()
    labels = torch.randint(0, vocab, (rows,))
    full_fp32 = rows * vocab * 4
    assert _largest_allocation(lambda x: F.cross_entropy(x.float(), labels, reduction="sum"), logits) >= full_fp32
    assert _largest_allocation(lambda x: losses.chunked_cross_entropy(x, labels, rows=8), logits) <= full_fp32 // 2


def test_default_chunk_bounds_the_fp32_workspace():
    rows = losses.chunk_rows(250_112)  # mT5's vocabulary
    assert 1 <= rows and rows * 250_112 * 4 <= losses.CHUNK_BYTES < (rows + 1) * 250_112 * 4
    assert losses.chunk_rows(10**9) == 1


def test_token_mean_loss_keeps_its_meaning_chunked():
    """sum / num_items_in_batch, whichever way the sum is computed."""
    logits, labels = _case(torch.float32, 1)
    plain = token_mean_loss({"logits": logits}, labels, num_items_in_batch=torch.tensor(40))
    chunked = token_mean_loss({"logits": logits}, labels, num_items_in_batch=torch.tensor(40),
                              cross_entropy=losses.chunked_cross_entropy)
    assert float(chunked) == pytest.approx(float(plain), rel=1e-6)
    own_count = token_mean_loss({"logits": logits}, labels, cross_entropy=losses.chunked_cross_entropy)
    assert float(own_count) == pytest.approx(float(plain) * 40 / int(labels.ne(-100).sum()), rel=1e-6)


def _plan(configs, **speed_section):  # noqa: F811
    exp = smoke_exp(configs, "01_mt5_xlsum_ultimate", speed=speed_section)
    return speed.decide(exp, (4, 4), cuda=True)


def test_chunked_loss_is_off_by_default_and_on_where_asked(configs, monkeypatch):  # noqa: F811
    """Off by default: on an H100 it did not lower the mT5 peaks it was for (BENCHMARKS.md). Asked for, it is the
    trainer's cross-entropy and recorded."""
    from trainables.config import SpeedSection

    assert SpeedSection().chunked_loss is False
    assert _plan(configs).as_metrics()["eff_speed_chunked_loss"] is False
    p = _plan(configs, chunked_loss=True)
    assert p.chunked_loss and p.as_metrics()["eff_speed_chunked_loss"] is True
    calls = []
    monkeypatch.setattr(losses, "chunked_cross_entropy", lambda *a, **k: calls.append(1) or torch.tensor(1.0))
    logits, labels = _case(torch.float32, 2)
    loss_function(p)({"logits": logits}, labels, None)
    assert calls


@pytest.mark.parametrize("off", ["speed", "chunked_loss"])
def test_speed_off_or_chunked_loss_off_is_the_plain_cross_entropy(configs, monkeypatch, off):  # noqa: F811
    p = None if off == "speed" else _plan(configs)  # with speed off the recipe has no plan
    assert p is None or not p.chunked_loss
    assert loss_function(p).keywords["cross_entropy"] is plain_cross_entropy
    monkeypatch.setattr(losses, "chunked_cross_entropy", lambda *a, **k: pytest.fail("chunked path taken"))
    logits, labels = _case(torch.float32, 2)
    plain = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100, reduction="sum")
    assert float(loss_function(p)({"logits": logits}, labels, None)) == pytest.approx(
        float(plain) / int(labels.ne(-100).sum()), rel=1e-7)


def test_a_trial_step_gives_the_same_loss_and_gradients_chunked_or_not(configs, standins, eight_rows, tmp_path,  # noqa: F811
                                                                        monkeypatch):
    """The trial's own Trainer (build_trainer), 4-bit mT5 with LoRA on the tied lm_head and embeddings, 4 x 2
    accumulation: the first optimizer step's LoRA gradients and loss with chunked_loss on and off (CPU, fp32 logits;
    measured: gradients 2.5e-7 apart (relative), the same logged loss)."""
    calls = []
    real = losses.chunked_cross_entropy
    monkeypatch.setattr(losses, "chunked_cross_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))
    exp = accumulation_exp(configs, "01_mt5_xlsum_ultimate", "qlora")
    path = standins("mt5")
    grads, loss = {}, {}
    for on in (False, True):
        exp.speed.chunked_loss = on
        grads[on], _, loss[on] = first_step(exp, path, eight_rows, 4, 2, tmp_path / str(on))
        assert len(calls) == (2 if on else 0)  # the two micro-batches of the chunked run, none of the plain one
    assert any("lora" in n for n in grads[True]) and grads[True].keys() == grads[False].keys()
    assert relative_difference(grads[True], grads[False]) <= 1e-5, relative_difference(grads[True], grads[False])
    assert loss[True] == pytest.approx(loss[False], rel=1e-6)


def test_dev_loss_chunked_equals_the_models_own_loss(configs, standins):  # noqa: F811
    """speed's dev loss (per-token mean of each configured evaluation batch, in file order, averaged), chunked and
    plain, against the model's own loss on those batches; 4-bit mT5 with LoRA on the tied lm_head."""
    import contextlib
    from types import SimpleNamespace

    from transformers import DataCollatorForSeq2Seq

    exp = smoke_exp(configs, "01_mt5_xlsum_ultimate")
    model, tok, _ = build(exp, standins("mt5"))
    model.eval()
    dialogues = ["#Person1#: 안녕하세요. 오늘 날씨가 좋네요.\n#Person2#: 네, 산책 갈까요?", "#Person1#: 전화번호가 뭐예요?",
                 "#Person1#: 내일 회의는 몇 시에 시작하나요?\n#Person2#: 오전 열 시요.", "#Person1#: 고마워요."]
    summaries = ["#Person1#과 #Person2#가 산책을 간다.", "번호를 묻는다.", "회의는 오전 열 시에 시작한다.", "감사 인사."]
    rows = [{**tok(d, return_token_type_ids=False), "labels": tok(text_target=s)["input_ids"]}
            for d, s in zip(dialogues, summaries)]
    collate = DataCollatorForSeq2Seq(tok, model=model, label_pad_token_id=-100)
    trainer = SimpleNamespace(model=model, data_collator=collate, args=SimpleNamespace(per_device_eval_batch_size=3),
                              compute_loss_context_manager=contextlib.nullcontext)
    with torch.no_grad():
        own = [float(model(**collate(rows[s:s + 3])).loss) for s in (0, 3)]  # file-order batches of 3 and 1
    want = (own[0] * 3 + own[1] * 1) / 4
    assert dev_loss(trainer, rows, chunked=False) == pytest.approx(want, rel=1e-6)
    assert dev_loss(trainer, rows, chunked=True) == pytest.approx(want, rel=1e-6)
