"""How sequences are framed with BOS/EOS for a seq2seq checkpoint, decided once per tokenizer by probing it.

Real tokenizers differ: KoBART's (gogamza/kobart-base-v2, digit82/kobart-summarization) add neither `<s>` nor
`</s>` by themselves, T5/mT5's append `</s>` and have no `<s>`, facebook/bart's wrap every text as `<s> … </s>`.
A model trained on labels without EOS never learns to stop, so every generated summary runs to max_length.

So nothing here trusts `tokenizer(text)` to frame anything: `probe_framing` looks at what the tokenizer adds to a
probe text (recorded, eff_framing), and from then on texts are encoded bare and framed by hand, the same way
whatever the tokenizer does:
- encoder inputs as the family expects: BART `<s> … </s>`, T5/mT5 `… </s>` (the config's prefix is part of the
  text); truncation cuts the text, then closes it;
- labels: the text, then exactly one EOS; a BOS in front only where the tokenizer puts one on targets itself
  (facebook/bart's convention), never for KoBART or T5;
- the decoder starts from the model config's decoder_start_token_id (the model shifts the labels right with it);
- generation stops on the tokenizer's EOS (eos_token_id, and forced_eos_token_id where the family forces one);
- decoding drops the start token, cuts at the first EOS and strips the special tokens.

One `Framing` serves training (`tokenize_split`, below), evaluation (the recipe's compute_metrics), `predict`
(generate.py) and export. Knows nothing of Ray, data files or the Trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from trainables.data import model_inputs

if TYPE_CHECKING:
    import pandas as pd

PROBE_TEXT = "요약 probe 1"
# Model types that frame as T5 does: no BOS, `… </s>`, the decoder starts from the pad token.
T5_MODEL_TYPES = frozenset({"t5", "mt5", "umt5", "longt5"})


@dataclass(frozen=True)
class Framing:
    family: str  # "bart" (<s> … </s>) or "t5" (… </s>)
    tokenizer_adds: str  # what tokenizer(text) adds by itself: "<s> … </s>", "… </s>", "<s> …" or "nothing"
    bos_id: int | None
    eos_id: int
    pad_id: int
    decoder_start_id: int
    label_bos: bool  # labels begin with BOS (only where the tokenizer itself puts one on targets)
    force_eos: bool  # generation forces EOS at max_length (BART's checkpoints do)
    notes: tuple[str, ...] = ()

    # -- encoding -----------------------------------------------------------------------------------

    @property
    def input_frame(self) -> tuple[list[int], list[int]]:
        return ([self.bos_id] if self.family == "bart" else []), [self.eos_id]

    @property
    def label_frame(self) -> tuple[list[int], list[int]]:
        return ([self.bos_id] if self.label_bos else []), [self.eos_id]

    def _frame(self, tokenizer, texts: Sequence[str], max_len: int, frame) -> list[list[int]]:
        head, tail = frame
        room = max_len - len(head) - len(tail)
        if room < 1:
            raise ValueError(f"max length {max_len} leaves no room for text between {head} and {tail}")
        bare = tokenizer(list(texts), add_special_tokens=False, return_token_type_ids=False)["input_ids"]
        return [head + ids[:room] + tail for ids in bare]  # truncate the text, then close it

    def encode_inputs(self, tokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
        """Encoder input ids, framed as the family expects, at most `max_len` long."""
        return self._frame(tokenizer, texts, max_len, self.input_frame)

    def encode_labels(self, tokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
        """Label ids: the text (cut to fit), then exactly one EOS."""
        return self._frame(tokenizer, texts, max_len, self.label_frame)

    # -- generation and decoding ----------------------------------------------------------------------

    def generation_settings(self) -> dict[str, Any]:
        """What generate() must use to start and stop the way the labels taught the model."""
        return {
            "decoder_start_token_id": self.decoder_start_id,
            "eos_token_id": self.eos_id,
            "pad_token_id": self.pad_id,
            "bos_token_id": self.bos_id,
            "forced_eos_token_id": self.eos_id if self.force_eos else None,
            "forced_bos_token_id": self.bos_id if self.label_bos else None,
        }

    def apply_to(self, model) -> None:
        """Set the model's generation config (the Trainer's evaluation and generate() read it) and its
        config's decoder_start_token_id (the model shifts the labels right with it)."""
        model.generation_config.update(**self.generation_settings())
        config = model.config
        if getattr(config, "decoder_start_token_id", None) is None:
            config.decoder_start_token_id = self.decoder_start_id

    def summary_ids(self, row: Iterable[int]) -> list[int]:
        """A generated row's summary: without the decoder's start token and BOS, up to the first EOS."""
        ids = [int(i) for i in row]
        if ids and ids[0] == self.decoder_start_id:
            ids = ids[1:]
        if self.label_bos and ids and ids[0] == self.bos_id:
            ids = ids[1:]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return [i for i in ids if i >= 0 and i != self.pad_id]

    def decode(self, tokenizer, rows) -> list[str]:
        """Generated rows (a tensor, an array with -100 padding or lists) -> cleaned summary texts: special
        tokens stripped, speaker tags and masks kept (they are ordinary added tokens)."""
        from trainables.metrics import clean_summary

        rows = rows.tolist() if hasattr(rows, "tolist") else rows
        strip = list(tokenizer.all_special_tokens)
        texts = tokenizer.batch_decode([self.summary_ids(r) for r in rows], skip_special_tokens=True)
        return [clean_summary(t, strip) for t in texts]

    # -- records ------------------------------------------------------------------------------------

    def describe(self) -> str:
        """One line for eff_framing and `check`: what the tokenizer does, and what the project makes of it."""
        head, _ = self.input_frame
        inputs = ("<s> " if head else "") + "… </s>"
        labels = ("<s> " if self.label_bos else "") + "… </s>"
        forced = ", forced" if self.force_eos else ""
        return (f"{self.family}: tokenizer adds {self.tokenizer_adds}; inputs {inputs}, labels {labels} "
                f"(bos {self.bos_id}, eos {self.eos_id}, pad {self.pad_id}); decoder starts at {self.decoder_start_id}; "
                f"generation stops at {self.eos_id}{forced}")


def _added(tokenizer, target: bool) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a probe text by itself."""
    bare = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    full = tokenizer(text_target=PROBE_TEXT)["input_ids"] if target else tokenizer(PROBE_TEXT)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    return [], []  # it changes the text itself; judge by nothing added


def probe_framing(tokenizer, model_config) -> Framing:
    """Decide the framing for `tokenizer` with a model of `model_config` (a transformers config, or a folder or
    hub id to read it from). The family comes from the config's model type; the rest from what the tokenizer
    produces and the ids it and the config name."""
    if isinstance(model_config, str):
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(model_config)
    family = "t5" if getattr(model_config, "model_type", "") in T5_MODEL_TYPES else "bart"
    notes: list[str] = []
    eos, pad, bos = tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token: summaries could not be taught to end")
    if pad is None:
        pad = getattr(model_config, "pad_token_id", None)
        pad = eos if pad is None else pad
        notes.append(f"tokenizer has no pad_token: padding with id {pad}")
    if family == "bart" and bos is None:
        raise ValueError("the tokenizer has no bos_token, which BART-family inputs begin with")
    head, tail = _added(tokenizer, target=False)
    adds = {(True, True): "<s> … </s>", (False, True): "… </s>", (True, False): "<s> …", (False, False): "nothing"}[
        (bos is not None and bos in head, eos in tail)]
    label_head, _ = _added(tokenizer, target=True)
    label_bos = family == "bart" and bos is not None and bos in label_head

    start = getattr(model_config, "decoder_start_token_id", None)
    if start is None:
        start = pad if family == "t5" else eos
        notes.append(f"model config has no decoder_start_token_id: starting the decoder at {start}")
    config_eos = getattr(model_config, "eos_token_id", None)
    if config_eos is not None and config_eos != eos:
        notes.append(f"model config's eos_token_id {config_eos} is not the tokenizer's {eos}: generation stops at {eos}")
    force_eos = getattr(model_config, "forced_eos_token_id", None) is not None or family == "bart"
    return Framing(family=family, tokenizer_adds=adds, bos_id=bos if family == "bart" else None, eos_id=eos,
                   pad_id=pad, decoder_start_id=start, label_bos=label_bos, force_eos=force_eos, notes=tuple(notes))


def tokenize_split(frame: pd.DataFrame, tokenizer, prefix: str, encoder_max_len: int, decoder_max_len: int,
                   framing: Framing):
    """A `datasets.Dataset` of input_ids/attention_mask/labels, framed with BOS/EOS by `framing` (whatever the
    tokenizer adds by itself) and truncated to the configured lengths; labels only where `frame` has summaries.

    Padding is left to the collator (dynamic padding, labels padded with -100), which matters for
    configs that allow 1,024-token inputs when most dialogues are far shorter."""
    from datasets import Dataset

    input_ids = framing.encode_inputs(tokenizer, model_inputs(frame["dialogue"].tolist(), prefix), encoder_max_len)
    columns = {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids]}
    if "summary" in frame.columns:
        columns["labels"] = framing.encode_labels(tokenizer, frame["summary"].tolist(), decoder_max_len)
    return Dataset.from_dict(columns)
