"""The seq2seq family's hooks for the speed layer's batched beam search (trainables.trial.speed.generation): the
cache generate() reorders, and the memory one dialogue needs. Static apart from the cache (transformers, lazily)."""

from __future__ import annotations

from trainables import compat


def generation_cache(beams: int):
    """With beams: an encoder-decoder cache whose beam reorder moves only the decoder's self-attention keys/values.
    Beam search only picks among the beams of one dialogue, whose cross-attention keys/values (one encoder output,
    repeated per beam) are equal, so transformers' reorder of them at every decoding step copies equal rows: for
    48 dialogues x 8 beams x ~500 input tokens about 5 GB of memory traffic per step, 58% of an evaluation's GPU
    kernel time in the H100 profile (`aten::gather`/`index_select`). None without beams."""
    return compat.self_attention_beam_cache() if beams > 1 else None


def generation_row_bytes(config, input_len: int, beams: int, gen_len: int, dtype_bytes: int) -> int:
    """A generous estimate of the GPU memory one dialogue needs during beam search, from a T5/mT5 or BART config:
    the cross-attention cache over the input and the self-attention cache over the summary (each with its
    reordered copy), the fp32 scores, and the encoder's activations."""
    d = getattr(config, "d_model", 768)
    inner = getattr(config, "num_heads", 0) * getattr(config, "d_kv", 0) or d  # T5's attention width, else d_model
    layers = getattr(config, "num_decoder_layers", None) or getattr(config, "decoder_layers", None) or 12
    ff = getattr(config, "d_ff", None) or getattr(config, "decoder_ffn_dim", None) or 4 * d
    vocab = getattr(config, "vocab_size", 32000)
    cross = beams * layers * 2 * inner * input_len * dtype_bytes * 2
    self_ = beams * layers * 2 * inner * gen_len * dtype_bytes * 2
    logits = beams * vocab * 4 * 4  # fp32 scores and the processors' copies
    encoder = input_len * (ff + 4 * d) * dtype_bytes * 2
    return cross + self_ + logits + encoder
