"""Model folders on disk that the project did not build itself, laid out like the real checkpoints it meets.

The stand-ins (`trainables.trial.families.seq2seq.standin.build_standin`) are the project's own work, so tests that only use them can't
show how the code copes with a tokenizer it didn't make. These builders save tiny random-weight models with plain
`transformers`/`tokenizers`, each in the layout of a real family's checkpoint:

- `kobart`: a BART model whose `PreTrainedTokenizerFast` has NO post-processor, so it adds neither `<s>` nor
  `</s>` by itself (like gogamza/kobart-base-v2 and digit82/kobart-summarization). KoBART's special ids:
  `<s>`=0, `</s>`=1, `<usr>`=2, `<pad>`=3, `<sys>`=4, `<unk>`=5, `<mask>`=6; config bos 0, eos 1, pad 3,
  decoder_start_token_id 1 (= eos, BART's convention), forced_eos_token_id 1; tied head.
- `mt5`: an mT5 model whose tokenizer appends `</s>` and has no `<s>`: `<pad>`=0, `</s>`=1, `<unk>`=2;
  decoder_start_token_id 0 (= pad); untied head; and more embedding rows than tokens (real mT5: 250,112 rows
  for 250,100 tokens), `spare_rows` of them, so tokens added later get ids inside the existing rows.
- `both`: a BART model whose tokenizer already wraps every text as `<s> … </s>` (facebook/bart's layout:
  `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, `<mask>`=4; decoder_start_token_id 2).

Usage: `build_foreign("kobart", tmp_path / "kobart")` returns the folder; `LAYOUTS` lists the names.
Each call trains its tokenizer on the shipped sample's text (a second or two) unless `texts` is given.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ("kobart", "mt5", "both")
VOCAB = 1000
MT5_SPARE_ROWS = 64  # 250,112 - 250,100 = 12 in the real one; 64 here, as in the report
DIMS_BART = dict(d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_layers=1, decoder_layers=1,
                 encoder_attention_heads=4, decoder_attention_heads=4, max_position_embeddings=512)
DIMS_T5 = dict(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4, d_kv=8)

# The speaker tags and masks the project adds: kept out of the trained vocabulary, so the project meets
# them as new tokens (as it does with every real checkpoint).
_TAG = re.compile(r"#\w+#")

KOBART_SPECIALS = ["<s>", "</s>", "<usr>", "<pad>", "<sys>", "<unk>", "<mask>"]
MT5_SPECIALS = ["<pad>", "</s>", "<unk>"]
BART_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def sample_texts() -> list[str]:
    """The shipped sample's train dialogues and summaries (what a tokenizer is trained on here)."""
    import pandas as pd

    frame = pd.read_csv(ROOT / "data" / "train.csv", dtype=str).dropna(subset=["dialogue", "summary"])
    return [*frame["dialogue"].tolist(), *frame["summary"].tolist()]


def _sentencepiece_like(kind: str, specials: list[str], texts: Iterable[str], vocab_size: int):
    """A Metaspace tokenizer (as SentencePiece checkpoints have) with `specials` at ids 0, 1, 2, ..."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind == "unigram":
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials)
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    tok.train_from_iterator((_TAG.sub(" ", t) for t in texts), trainer=trainer)
    if kind == "unigram":  # the same ids on every run (the trainer's order and last digits vary)
        from trainables.trial.families.seq2seq.standin import canonical_unigram

        canonical_unigram(tok, specials)
    for i, s in enumerate(specials):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s), i)
    return tok


def _save(folder: Path, model, tokenizer, layout: str) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "FOREIGN.json").write_text(json.dumps({"layout": layout}))
    return folder


def build_kobart_like(folder: Path, texts: list[str] | None = None, seed: int = 0) -> Path:
    """BART + a fast tokenizer that adds no special token by itself; `<s>`=0, `</s>`=1, `<pad>`=3."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

    tok = _sentencepiece_like("bpe", KOBART_SPECIALS, texts or sample_texts(), VOCAB)
    tok.post_processor = None  # the point of this layout: encode() returns the text's pieces only
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        mask_token="<mask>",
    )
    config = BartConfig(
        vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=1, pad_token_id=3, decoder_start_token_id=1,
        forced_eos_token_id=1, tie_word_embeddings=True, scale_embedding=False, **DIMS_BART,
    )
    torch.manual_seed(seed)
    return _save(folder, BartForConditionalGeneration(config), tokenizer, "kobart")


def build_mt5_like(folder: Path, texts: list[str] | None = None, seed: int = 0, spare_rows: int = MT5_SPARE_ROWS) -> Path:
    """mT5 + a tokenizer that appends `</s>` (pad 0, eos 1, no bos), with `spare_rows` embedding rows beyond
    the tokenizer's length, and an output head of its own (untied)."""
    import torch
    from tokenizers import processors
    from transformers import MT5Config, MT5ForConditionalGeneration, PreTrainedTokenizerFast

    tok = _sentencepiece_like("unigram", MT5_SPECIALS, texts or sample_texts(), VOCAB)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    config = MT5Config(
        vocab_size=len(tokenizer) + spare_rows, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0, **DIMS_T5,
    )
    torch.manual_seed(seed)
    model = MT5ForConditionalGeneration(config)
    # transformers 5 ties (m)T5 heads whatever the config says; real mT5 checkpoints store a head of their own
    # (and `"tie_word_embeddings": false`), which from_pretrained then loads untied. Save it that way.
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * model.config.d_model**-0.5)
    folder = _save(folder, model, tokenizer, "mt5")
    config_file = folder / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "tie_word_embeddings": False}, indent=2))
    return folder


def build_bos_eos_like(folder: Path, texts: list[str] | None = None, seed: int = 0) -> Path:
    """BART + a tokenizer that already wraps every text as `<s> … </s>` (facebook/bart's ids)."""
    import torch
    from tokenizers import processors
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

    tok = _sentencepiece_like("bpe", BART_SPECIALS, texts or sample_texts(), VOCAB)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        mask_token="<mask>",
    )
    config = BartConfig(
        vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=2, pad_token_id=1, decoder_start_token_id=2,
        forced_eos_token_id=2, tie_word_embeddings=True, **DIMS_BART,
    )
    torch.manual_seed(seed)
    return _save(folder, BartForConditionalGeneration(config), tokenizer, "both")


BUILDERS = {"kobart": build_kobart_like, "mt5": build_mt5_like, "both": build_bos_eos_like}


def build_foreign(layout: str, folder: Path, texts: list[str] | None = None, seed: int = 0) -> Path:
    """Build the `layout` model folder (one of LAYOUTS) at `folder` and return it."""
    return BUILDERS[layout](folder, texts=texts, seed=seed)
