"""The causal-LM family's shapes for the plan (static: no torch): Llama/Qwen2/Qwen3 dimensions from config.json, the
projections LoRA wraps, and the bytes and work of one training micro-batch and one generation batch (the contract:
trainables.trial.families.shapes).

A decoder-only model has no encoder: a training row is the prompt (dialogue in its template) and the summary as one
sequence through every layer, and the plain loss takes logits over the whole sequence; generation runs the prompt
once (each beam its own copy) and keeps every layer's KV cache of prompt plus generated tokens per beam. Lengths are
the config's upper bounds: a prompt of tokenizer.encoder_max_len tokens, a summary of decoder_max_len, generation of
generation.max_length new tokens. None of this is calibrated on a decoder-only GPU run yet: the plan puts these
features through the seq2seq coefficients and says so. Against FIELD-NOTES.md's H200 measurements of the plain path
(Qwen2.5-0.5B/1.5B shapes, LoRA r16, 640-token rows) those predictions came out 2-14% low on the training peak,
-12% to +54% on training throughput and -16% to +2% on a generation batch (BENCHMARKS.md). Two assumptions carried
over from the seq2seq rows: with gradient checkpointing the peak holds the checkpoints and the logits, not a
recomputed layer (measured on BART; a 10.7B model's layer at a 32k vocabulary may be larger than its logits), and
the activation bytes per token and layer are the seq2seq encoder layer's (attention and a gated feed-forward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainables.trial.families.causal_lm.names import PROJECTIONS
from trainables.trial.families.shapes import LinearModule, ShapeCost

if TYPE_CHECKING:
    from trainables.config import ExperimentConfig

# config.json fields of the shipped checkpoints (search_spaces/llm/), for the plan when config.json is not on disk.
KNOWN_DIMS = {
    "qwen2": dict(checkpoint="Qwen/Qwen2.5-1.5B-Instruct", hidden_size=1536, intermediate_size=8960,
                  num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, head_dim=128,
                  vocab_size=151936, tie_word_embeddings=True),
    "qwen3": dict(checkpoint="Qwen/Qwen3-4B-Instruct-2507", hidden_size=2560, intermediate_size=9728,
                  num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                  vocab_size=151936, tie_word_embeddings=True),
    "llama": dict(checkpoint="upstage/SOLAR-10.7B-Instruct-v1.0", hidden_size=4096, intermediate_size=14336,
                  num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                  vocab_size=32000, tie_word_embeddings=False),
}
FEATURES = ("prompt + summary through every layer, logits over the whole sequence, KV caches of prompt + generated "
            "tokens per beam, no encoder")


@dataclass(frozen=True)
class Dims:
    arch: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int  # grouped-query attention: k_proj and v_proj are this many heads wide
    head_dim: int
    vocab: int
    tied: bool  # output head shares the embedding
    source: str


def dims(architecture: str, config: dict[str, Any] | None, source: str) -> Dims:
    """From config.json's fields (KeyError if they are another family's); None: the shipped checkpoint's."""
    if config is None:
        config = KNOWN_DIMS[architecture]
        source = f"known dimensions of {config['checkpoint']} (trainables/trial/families/causal_lm/shapes.py)"
    heads = config["num_attention_heads"]
    return Dims(architecture, config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"], heads,
                config.get("num_key_value_heads") or heads, config.get("head_dim") or config["hidden_size"] // heads,
                config["vocab_size"], bool(config.get("tie_word_embeddings", False)), source)


def weight_bytes(four_bit: bool) -> int:
    """A 4-bit base keeps its embeddings, output head and norms in fp32 (peft's prepare_model_for_kbit_training
    upcasts them, as the seq2seq family's 4-bit path does); without 4-bit the base is loaded in bf16."""
    return 4 if four_bit else 2


def linear_modules(d: Dims) -> list[LinearModule]:
    """Every layer's attention and gated-MLP projections, by the names LoRA targets use."""
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    shapes = [(d.hidden, q), (d.hidden, kv), (d.hidden, kv), (q, d.hidden),
              (d.hidden, d.intermediate), (d.hidden, d.intermediate), (d.intermediate, d.hidden)]
    return [(name, i, o, d.layers, "dec") for name, (i, o) in zip(PROJECTIONS, shapes)]


def parameter_count(d: Dims) -> int:
    stack = sum(i * o * c for _, i, o, c, _ in linear_modules(d))
    return stack + d.vocab * d.hidden * (1 if d.tied else 2)


def cost(d: Dims, exp: ExperimentConfig, batch: int, four_bit: bool) -> ShapeCost:
    t, gen = exp.training, exp.generation
    prompt, seq = exp.tokenizer.encoder_max_len, exp.tokenizer.encoder_max_len + exp.tokenizer.decoder_max_len
    hyps, gmax, gc = t.per_device_eval_batch_size * gen.num_beams, gen.max_length, t.gradient_checkpointing
    kv = d.layers * 2 * hyps * (prompt + gmax) * d.kv_heads * d.head_dim * 2  # bf16 caches, every beam its own
    # the prompt's forward (one layer's MLP at a time, bf16) and the last position's logits, scores, processed scores
    gen_bytes = kv + hyps * prompt * (d.hidden + 2 * d.intermediate) * 2 + 3 * hyps * d.vocab * 4
    return ShapeCost(act_bytes=_activation_bytes(d, batch, seq, gc, four_bit), logit_bytes=batch * seq * d.vocab * 4,
                     kv_bytes=kv, gen_bytes=gen_bytes, tflop=_training_tflop(d, batch, seq, gc),
                     gen_calls_per_token=d.layers * len(PROJECTIONS) + 1, hypotheses=hyps, gen_tokens=gmax)


def _activation_bytes(d: Dims, b: int, n: int, gc: bool, four_bit: bool) -> float:
    """Saved activations of `b` rows of `n` tokens. A 4-bit base runs its residual stream in fp32 (fp32 embeddings
    and norms under bf16 autocast, as the seq2seq family's fp32 layers do); a bf16 base keeps half of that."""
    width = 4 if four_bit else 2
    if gc:  # every layer's input is kept; the layer recomputed in the backward pass comes after the logits are freed
        return b * d.layers * n * d.hidden * width
    # per token and layer: the seq2seq family's encoder layer (attention, gated feed-forward) constants, for fp32
    # layers under autocast; SDPA attention keeps no score matrix
    per_token = (60 * d.hidden + 18 * d.intermediate) * width / 4
    return b * d.layers * n * per_token


def _training_tflop(d: Dims, b: int, n: int, gc: bool) -> float:
    """FLOPs of one training micro-batch (forward, backward at twice the forward, a recompute), in 1e12."""
    stack = sum(i * o * c for _, i, o, c, _ in linear_modules(d))
    fwd = 2 * (stack + d.hidden * d.vocab) * b * n + 4 * b * d.heads * d.head_dim * d.layers * n * n
    return fwd * (3 + (1 if gc else 0)) / 1e12
