"""What an exported seq2seq folder needs beyond the merged weights: a tokenizer that frames inputs by itself, and
the model card's word on what loading a T5/mT5 folder logs."""

from __future__ import annotations

from trainables.trial.families.seq2seq.checks import T5_FAMILY

# transformers 5's T5Config and MT5Config set tie_word_embeddings=True whatever config.json says (configuration_t5.py:
# "we tie weights always"), so loading weights saved untied logs that it will not tie them; no config value avoids it
UNTIED_T5_NOTE = """
Loading this folder, transformers 5 logs up to three lines "specifies to tie shared.weight to ... but both are present
in the checkpoints with different values, so we will NOT tie them". They are expected and harmless: the encoder's and
decoder's embeddings and the output head computed with their own weights in training and are saved apart
(`tie_word_embeddings: false`), and transformers keeps them as saved; its T5/mT5 config forces tying on whatever
config.json says, so no setting in this folder silences them.
"""


def export_notes(architecture: str) -> str:
    """The model card's extra lines for a merged folder of `architecture`: T5/mT5 ones log tie messages."""
    return UNTIED_T5_NOTE if architecture in T5_FAMILY else ""


def frame_tokenizer(tokenizer, framing) -> None:
    """Give the fast tokenizer a post-processor that frames a single text as `framing` frames encoder inputs, so
    plain `tokenizer(text)` feeds the exported model what training fed it (a KoBART tokenizer adds nothing by
    itself; training framed `<s> … </s>`). Truncation leaves room for the frame, as Framing's does."""
    from tokenizers import processors

    head, tail = framing.input_frame
    name = lambda i: tokenizer.convert_ids_to_tokens(i)
    single = " ".join([*(name(i) for i in head), "$A", *(name(i) for i in tail)])
    pair = " ".join([single, "$B:1", *(f"{name(i)}:1" for i in tail)])
    specials = sorted({(name(i), i) for i in head + tail}, key=lambda t: t[1])
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
