"""The seq2seq family's offline stand-ins: a random-weight T5/mT5/BART and a tokenizer trained on local text.

Model hubs are unreachable offline, so `--mode smoke` (and the real-size GPU benchmark) build a model of the same
architecture (T5, mT5, BART config classes) with random weights and a tokenizer trained on the local data, and save
it as an ordinary Hugging Face model folder. From there on the stand-in is loaded with the same `from_pretrained`
code as a real checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from trainables.metrics import TAG
from trainables.trial.families.seq2seq.checks import T5_FAMILY

# Real checkpoints' shapes (from their config.json on the hub), for real-size stand-ins on the GPU benchmark.
REAL_DIMS = {
    "mt5": dict(d_model=768, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12, d_kv=64, vocab_size=250112),
    "t5": dict(d_model=768, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12, d_kv=64, vocab_size=50358),
    "bart": dict(d_model=768, encoder_ffn_dim=3072, decoder_ffn_dim=3072, encoder_layers=6, decoder_layers=6,
                 encoder_attention_heads=16, decoder_attention_heads=16, vocab_size=30000, max_position_embeddings=1026),
}
TINY_DIMS = {
    "mt5": dict(d_model=64, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16),
    "t5": dict(d_model=64, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16),
    "bart": dict(d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128, encoder_layers=2, decoder_layers=2,
                 encoder_attention_heads=4, decoder_attention_heads=4, max_position_embeddings=512),
}
TINY_VOCAB = 2000
MT5_SPARE_ROWS = 16  # at least this many embedding rows beyond the mT5 stand-in's tokenizer (room for the added tokens)
STANDIN_FORMAT = 6  # bump when the stand-in recipe changes, so cached ones are rebuilt


def _train_tokenizer(arch: str, texts: Iterable[str], vocab_size: int):
    """A SentencePiece-style (Metaspace) tokenizer trained on local text, with the family's special tokens at
    the real checkpoints' ids and the real ones' behaviour: T5/mT5's append `</s>` (`<pad>`=0, `</s>`=1, no
    `<s>`); KoBART's add nothing by themselves (`<s>`=0, `</s>`=1, `<pad>`=3, no post-processor)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if arch in T5_FAMILY:
        specials = ["<pad>", "</s>", "<unk>"]
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
    else:
        specials = ["<s>", "</s>", "<usr>", "<pad>", "<sys>", "<unk>", "<mask>"]  # KoBART's order
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials)
    tok.normalizer = normalizers.NFKC()
    # prepend_scheme="first": text that follows an added token ("#Person1#은") must not gain a space.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    # Leave the speaker tags and masks out of the learned vocabulary: like a real checkpoint's tokenizer,
    # the stand-in must meet them as new tokens, so the added-token path is exercised.
    tok.train_from_iterator((TAG.sub(" ", t) for t in texts), trainer=trainer)
    if arch in T5_FAMILY:
        canonical_unigram(tok, specials)  # Unigram training is not deterministic by itself
    eos = ("</s>", tok.token_to_id("</s>"))
    if arch in T5_FAMILY:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[eos])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    return PreTrainedTokenizerFast(  # no post-processor: like KoBART's, it adds neither <s> nor </s>
        tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>", mask_token="<mask>"
    )


def canonical_unigram(tok, specials: list[str]) -> None:
    """Make a freshly trained Unigram tokenizer the same on every run. `tokenizers`' trainer sums its scores in
    parallel (the last digit varies), orders equal scores as a hash map happens to, and appends the characters it
    must keep with scores 0.0001 apart in hash order: pieces got other ids and scores each time (measured: 155
    of 963 ids moved between two builds of the same text). Here the pieces after the special tokens (ids 0.., in
    `specials` order) are ordered by rounded score, then text; the appended characters by text, rescored."""
    from tokenizers import models

    model = json.loads(tok.to_str())["model"]
    vocab = [(piece, round(score, 6)) for piece, score in model["vocab"]]
    n = len(specials)
    assert [p for p, _ in vocab[:n]] == list(specials), vocab[:n]
    tail = len(vocab) - 1  # the appended characters: the run at the end whose scores step down by <= 0.0001
    while tail > n and vocab[tail - 1][1] - vocab[tail][1] <= 1.5e-4:
        tail -= 1
    trained = sorted(vocab[n:tail], key=lambda t: (-t[1], t[0]))
    top = vocab[tail][1] if tail < len(vocab) else 0.0
    appended = [(piece, round(top - 1e-4 * k, 6)) for k, (piece, _) in enumerate(sorted(vocab[tail:]))]
    tok.model = models.Unigram(vocab[:n] + trained + appended, unk_id=model["unk_id"],
                               byte_fallback=model.get("byte_fallback", False))


def _standin_config(arch: str, size: str, tokenizer):
    from transformers import BartConfig, MT5Config, T5Config

    dims = dict((REAL_DIMS if size == "real" else TINY_DIMS)[arch])
    vocab = max(dims.pop("vocab_size", 0), len(tokenizer))
    if arch == "mt5":  # like the real one (250,112 rows for 250,100 tokens): rows to a multiple of 128, spare ones
        vocab = max(vocab, -(-(len(tokenizer) + MT5_SPARE_ROWS) // 128) * 128)
    if arch in T5_FAMILY:
        cls = MT5Config if arch == "mt5" else T5Config
        return cls(
            vocab_size=vocab, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.1,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id, **dims,
        )
    return BartConfig(
        vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True, scale_embedding=True, **dims,
    )


def _warm_start(model, tokenizer, texts: list[str], seed: int, steps: int = 150, batch: int = 16) -> None:
    """Pre-train the tiny stand-in on the language (not the task) for a few seconds.

    A real checkpoint knows Korean before it is fine-tuned; a random tiny model does not, and LoRA on a
    random base barely moves (measured: loss 7.3 -> 7.2 over 3 epochs of the sample data). So the stand-in
    first learns to reconstruct the local texts from a copy with 15% of its tokens deleted: it learns the
    words, not how to summarize, and the fine-tuning that follows has something real to improve.

    150 steps (was 300): 16-17 s a stand-in on one core of the 2-core machine instead of 25-34 s; smoke trials on
    them still beat the untrained stand-in on dev (tests/test_smoke_grid.py; measured 2026-12-02)."""
    import torch

    from trainables.trial.families.seq2seq.framing import probe_framing

    generator = torch.Generator().manual_seed(seed)
    ids = probe_framing(tokenizer, model.config).encode_labels(tokenizer, texts, 64)  # ends with EOS, as in training
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    pad = tokenizer.pad_token_id
    model.train()
    for _ in range(steps):
        pick = torch.randint(len(ids), (batch,), generator=generator).tolist()
        targets = [torch.tensor(ids[i]) for i in pick]
        noisy = [t[torch.rand(len(t), generator=generator) > 0.15] for t in targets]
        inputs = torch.nn.utils.rnn.pad_sequence(noisy, batch_first=True, padding_value=pad)
        labels = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=-100)
        loss = model(input_ids=inputs, attention_mask=(inputs != pad).long(), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def build_standin(arch: str, texts: list[str], cache_dir: Path, size: str = "tiny", seed: int = 0,
                  warm_start: bool = True) -> Path:
    """Build (once) and return a folder holding a random-weight model of `arch` and a local tokenizer.

    The folder's name includes a hash of the training texts, so new data gives a new tokenizer. Tiny stand-ins
    are warm-started unless `warm_start=False` (tests and benchmarks that only need the code paths)."""
    from trainables.trial.families.common import build_once, save_standin, seeded_on_one_thread, standin_folder

    warm = size == "tiny" and warm_start
    target = standin_folder(STANDIN_FORMAT, arch, texts, cache_dir, size, seed, warm)

    def build() -> Path:  # transformers and torch only when building: a cached stand-in costs the driver no imports
        import torch
        from transformers import AutoModelForSeq2SeqLM

        tokenizer = _train_tokenizer(arch, texts, TINY_VOCAB)
        with seeded_on_one_thread(seed, one_thread=size == "tiny"):
            model = AutoModelForSeq2SeqLM.from_config(_standin_config(arch, size, tokenizer))
            if arch in T5_FAMILY:
                # Real T5/mT5 checkpoints have an output head of their own; transformers 5 ties it whatever the
                # config says, so untie it here and save it (from_pretrained keeps a head stored apart untied).
                model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * model.config.d_model**-0.5)
            if warm:
                _warm_start(model, tokenizer, texts, seed=seed)
        # T5/mT5: the head saved apart must load untied (transformers 5's config would tie it)
        return save_standin(model, tokenizer, target, arch, size,
                            {"tie_word_embeddings": False} if arch in T5_FAMILY else None)

    return build_once(target, build)
