"""A config's generation settings as `generate()` arguments: one mapping for the Trainer's evaluation, the
families' generate (predict, the untrained-baseline check) and export."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainables.config import GenerationSection


def generation_kwargs(gen: GenerationSection) -> dict[str, Any]:
    """A config's `generation` section as `generate()`/GenerationConfig arguments. The length penalty only acts in
    beam search; with one beam it is left at its default, since transformers refuses to save a generation config
    that sets it for greedy decoding."""
    return {"num_beams": gen.num_beams, "max_length": gen.max_length, "min_length": gen.min_length,
            "length_penalty": gen.length_penalty if gen.num_beams > 1 else 1.0,
            "no_repeat_ngram_size": gen.no_repeat_ngram_size}
