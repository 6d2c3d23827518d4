"""The causal-LM family's architectures and layer names (static: no torch).

Llama, Qwen2 and Qwen3 checkpoints name their layers alike: attention q/k/v/o projections, a gated MLP
(gate/up/down), the input embeddings `embed_tokens` and the output head `lm_head`."""

ARCHITECTURES = frozenset({"llama", "qwen2", "qwen3"})
# Every attention and MLP projection: what "all projection layers" (the competition winner's LoRA) means here.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LINEAR_NAMES = frozenset({*PROJECTIONS, "lm_head"})
EMBEDDING_NAMES = frozenset({"embed_tokens"})
