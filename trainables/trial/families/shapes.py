"""What the plan asks of a family's static shapes module (`families/<family>/shapes.py`), and what it answers.

The plan (trainables.driver.features) sizes a trial without weights and without torch. From the checkpoint's
config.json (or the real checkpoint's known dimensions) a family's `dims` gives the model's shape; from the shape and
the experiment's settings its `cost` gives the bytes and the work of one training micro-batch and of one generation
batch (a ShapeCost). What every family shares (4-bit weights, LoRA parameters with their gradients and Adam state,
module calls, the merged copy, the calibration's coefficients) stays in the planner, so a family module holds only
what differs between kinds of model. `shapes_of(architecture)` (trainables.trial.families) finds the module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from trainables.config import ExperimentConfig

# (LoRA target name, in features, out features, how many, part): "enc" or "dec"; a decoder-only model is all "dec"
LinearModule = tuple[str, int, int, int, str]


class ModelDims(Protocol):
    arch: str
    hidden: int  # the model's width: what an embedding row and the output head's input hold
    vocab: int
    source: str  # where the dimensions came from (a config.json, or the known dimensions)


@dataclass(frozen=True)
class ShapeCost:
    """Raw bytes and work of one experiment's shapes; the calibration turns them into GiB and seconds."""

    act_bytes: float  # saved activations of one training micro-batch (gradient checkpointing as configured)
    logit_bytes: float  # the training logits in fp32: micro-batch x positions with logits x vocab x 4
    kv_bytes: float  # one eval batch's KV caches (all beams), half precision
    gen_bytes: float  # all that one eval batch's generation holds: KV caches, expanded states, beams' logits
    tflop: float  # FLOPs of one training micro-batch (forward, backward, recompute), in 1e12
    gen_calls_per_token: int  # linear-layer calls per generated token (the stack that decodes, and the output head)
    hypotheses: int  # eval batch x beams
    gen_tokens: int  # tokens generated per hypothesis (the upper bound: max_length or max_new_tokens)


class FamilyShapes(Protocol):
    """The static half of a family that the plan uses (a module: families/<family>/shapes.py). No torch."""

    FEATURES: str  # what its cost counts, in a few words, for the plan's line on a family its table never measured

    def dims(self, architecture: str, config: dict[str, Any] | None, source: str) -> ModelDims:
        """The shape from config.json fields (KeyError: not this family's config); config None: the real
        checkpoint's known dimensions."""

    def weight_bytes(self, four_bit: bool) -> int:
        """Bytes per weight outside 4-bit layers as the family loads them (4: fp32, 2: bf16)."""

    def linear_modules(self, dims: ModelDims) -> list[LinearModule]:
        """The stack's linear layers by the names LoRA targets use (the output head is not among them)."""

    def parameter_count(self, dims: ModelDims) -> int:
        """Weights of linear layers and embeddings (norms and biases left out: well under 1%)."""

    def cost(self, dims: ModelDims, exp: ExperimentConfig, batch: int, four_bit: bool) -> ShapeCost:
        """Bytes and work of `exp` at training micro-batch `batch`, its base in 4-bit or not (`four_bit`: what the
        run does, which may differ from the config)."""
