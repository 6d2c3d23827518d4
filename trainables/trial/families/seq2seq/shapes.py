"""The seq2seq family's shapes for the plan (static: no torch): T5/mT5/BART dimensions from config.json, the linear
layers LoRA wraps, and the bytes and work of one training micro-batch and one generation batch (the contract:
trainables.trial.families.shapes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainables.trial.families.seq2seq.checks import T5_FAMILY
from trainables.trial.families.shapes import LinearModule, ShapeCost

if TYPE_CHECKING:
    from trainables.config import ExperimentConfig



FEATURES = ("inputs through the encoder and targets through the decoder, decoder-length logits, KV caches and "
            "expanded encoder states per beam")


@dataclass(frozen=True)
class Dims:
    arch: str
    d_model: int
    d_ff: int
    enc_layers: int
    dec_layers: int
    heads: int
    inner: int  # heads x d_kv
    vocab: int
    gated: bool  # T5 v1.1 / mT5: wi_0 and wi_1
    tied: bool  # output head shares the embedding
    positions: int  # learned position embeddings (BART)
    source: str

    @property
    def hidden(self) -> int:
        return self.d_model


def dims(architecture: str, config: dict[str, Any] | None, source: str) -> Dims:
    """From config.json's fields (KeyError if they are another family's); None: the real checkpoint's known ones."""
    if config is None:
        from trainables.trial.families.seq2seq.standin import REAL_DIMS

        config = dict(REAL_DIMS[architecture])
        if architecture in T5_FAMILY:  # the shipped T5/mT5 checkpoints: gated feed-forward, untied output head
            config.update(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
        source = "known dimensions (trainables/trial/families/seq2seq/standin.py REAL_DIMS)"
    if architecture in T5_FAMILY:
        return _t5_dims(architecture, config, source)
    return Dims(architecture, config["d_model"], config.get("encoder_ffn_dim", 4 * config["d_model"]),
                config["encoder_layers"], config["decoder_layers"], config.get("encoder_attention_heads", 16),
                config["d_model"], config["vocab_size"], False, True, config.get("max_position_embeddings", 1024) + 2,
                source)


def _t5_dims(architecture: str, cfg: dict[str, Any], source: str) -> Dims:
    heads = cfg.get("num_heads", 12)
    ff = str(cfg.get("feed_forward_proj", "gated-gelu" if architecture == "mt5" else "relu"))
    tied = bool(cfg.get("tie_word_embeddings", architecture == "t5" and "gated" not in ff))
    return Dims(architecture, cfg["d_model"], cfg["d_ff"], cfg["num_layers"],
                cfg.get("num_decoder_layers") or cfg["num_layers"], heads,
                heads * cfg.get("d_kv", cfg["d_model"] // heads), cfg["vocab_size"], "gated" in ff, tied, 0, source)


def weight_bytes(four_bit: bool) -> int:
    """The family loads its weights in fp32 (bf16 autocast computes), 4-bit layers aside."""
    return 4


def linear_modules(d: Dims) -> list[LinearModule]:
    """(name, in, out, count, "enc"|"dec") of the stacks' linear layers, by the names LoRA targets use."""
    if d.arch in T5_FAMILY:
        ff = [("wi_0", d.d_model, d.d_ff), ("wi_1", d.d_model, d.d_ff)] if d.gated else [("wi", d.d_model, d.d_ff)]
        ff.append(("wo", d.d_ff, d.d_model))
        attn = [("q", d.d_model, d.inner), ("k", d.d_model, d.inner), ("v", d.d_model, d.inner), ("o", d.inner, d.d_model)]
    else:
        attn = [(n, d.d_model, d.d_model) for n in ("q_proj", "k_proj", "v_proj", "out_proj")]
        ff = [("fc1", d.d_model, d.d_ff), ("fc2", d.d_ff, d.d_model)]
    enc, dec = attn + ff, attn + attn + ff  # the decoder's layers add cross-attention
    return [(n, i, o, d.enc_layers, "enc") for n, i, o in enc] + [(n, i, o, d.dec_layers, "dec") for n, i, o in dec]


def parameter_count(d: Dims) -> int:
    stack = sum(i * o * c for _, i, o, c, _ in linear_modules(d))
    return stack + d.vocab * d.d_model * (1 if d.tied else 2) + d.positions * d.d_model * 2


def cost(d: Dims, exp: ExperimentConfig, batch: int, four_bit: bool) -> ShapeCost:
    """Inputs fill encoder_max_len, targets decoder_max_len, generation runs to max_length (upper bounds). The
    activations are fp32 layers' under bf16 autocast whether the stack is 4-bit or not."""
    t, tok, gen = exp.training, exp.tokenizer, exp.generation
    L, T, gc = tok.encoder_max_len, tok.decoder_max_len, t.gradient_checkpointing
    be, gmax = t.per_device_eval_batch_size, gen.max_length
    hyps = be * gen.num_beams
    kv, gen_bytes = _generation_bytes(d, be, hyps, L, gmax)
    mods = linear_modules(d)
    # The logits are sized as for the plain loss whether or not speed.chunked_loss is on: measured on an H100
    # (2026-11-26, benchmarks/results/packed-ray-2026-11-26-h100.json) 01_mt5_xlsum_ultimate still peaked at 16.5 GiB
    # at 4 x 4 with the chunked loss (16.6 with the plain loss the day before), where a modelled saving said 13.6,
    # and packed caps sized from that saving ran out of memory.
    return ShapeCost(act_bytes=_activation_bytes(d, batch, L, T, gc), logit_bytes=batch * T * d.vocab * 4,
                     kv_bytes=kv, gen_bytes=gen_bytes, tflop=_training_tflop(d, mods, batch, L, T, gc),
                     gen_calls_per_token=sum(c for *_, c, part in mods if part == "dec") + 1,
                     hypotheses=hyps, gen_tokens=gmax)


def _activation_bytes(d: Dims, b: int, L: int, T: int, gc: bool) -> float:
    """Saved activations of one training micro-batch of `b` rows (encoder length L, decoder length T)."""
    if gc:  # the layers' inputs (fp32) are kept; the layer recomputed in the backward pass comes after the logits
        # are freed: measured on the H100 (three BART configs), the peak held the checkpoints and the logits only
        return b * (d.enc_layers * L + d.dec_layers * T) * 4 * d.d_model
    # Saved activations per token and layer, in bytes (bf16 autocast over fp32 layers, eager/SDPA attention).
    per_tok_enc = 60 * d.d_model + 18 * d.d_ff
    per_tok_dec = 90 * d.d_model + 18 * d.d_ff
    # T5's relative position bias keeps the L x L scores (fp32 softmax, dropout mask); BART runs PyTorch SDPA,
    # whose fused kernels keep none.
    att = 10 * d.heads if d.arch in T5_FAMILY else 0
    return b * (d.enc_layers * (L * per_tok_enc + att * L * L) + d.dec_layers * (T * per_tok_dec + att * (T * T + T * L)))


def _generation_bytes(d: Dims, be: int, hyps: int, L: int, gmax: int) -> tuple[float, float]:
    """(KV caches, all of it) for one eval batch of `be` rows and `hyps` beam hypotheses: generation with
    beams (KV caches in half precision, encoder states expanded per beam, per-step logits of every hypothesis
    in fp32), and the encoder's own forward pass."""
    kv = d.dec_layers * 2 * hyps * (L + gmax) * d.inner * 2
    return kv, kv + hyps * L * d.d_model * 4 + 3 * hyps * d.vocab * 4 + be * d.heads * L * L * 4 * 3


def _training_tflop(d: Dims, mods: list[LinearModule], b: int, L: int, T: int, gc: bool) -> float:
    """FLOPs of one training micro-batch (forward, backward at twice the forward, a recompute), in 1e12."""
    stack = sum(i * o * c for _, i, o, c, _ in mods)
    enc_lin = sum(i * o * c for _, i, o, c, part in mods if part == "enc")
    fwd = 2 * (enc_lin * b * L + (stack - enc_lin) * b * T + d.d_model * d.vocab * b * T)
    fwd += 4 * b * d.inner * (d.enc_layers * L * L + d.dec_layers * (T * T + T * L))
    return fwd * (3 + (1 if gc else 0)) / 1e12
