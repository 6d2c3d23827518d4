"""The causal-LM family's offline stand-ins: a random-weight Llama, Qwen2 or Qwen3 and a tokenizer trained on
local text, saved as an ordinary Hugging Face folder and from then on loaded like a real checkpoint.

Each stand-in copies what matters of the real checkpoint its shipped config names (search_spaces/llm/):
- qwen2 (Qwen2.5-1.5B-Instruct) and qwen3 (Qwen3-4B-Instruct-2507): a byte-level BPE tokenizer without BOS,
  EOS `<|im_end|>` (the chat turn's end) and pad `<|endoftext|>` (not the EOS), both added after the vocabulary
  as on the hub; a ChatML chat template (qwen2's adds a default system message, as Qwen2.5's does); tied
  embeddings with spare embedding rows beyond the tokenizer (the added speaker tokens land inside them).
- llama (SOLAR-10.7B-Instruct): a sentencepiece-style BPE tokenizer (`<unk>` 0, `<s>` 1, `</s>` 2) that puts
  `<s>` before every text by itself, NO pad token and no chat template (the config's plain template
  `### User:\n...\n\n### Assistant:\n` is the prompt); an untied output head; exactly as many rows as tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainables.metrics import TAG

# Context lengths (config.json's max_position_embeddings) of the shipped checkpoints; their other dimensions are
# shapes.KNOWN_DIMS (the plan's).
REAL_CONTEXT = {"qwen2": 32768, "qwen3": 262144, "llama": 4096}


def real_dims(arch: str) -> dict:
    """config.json fields of the shipped checkpoint of `arch` (search_spaces/llm/), for real-size stand-ins."""
    from trainables.trial.families.causal_lm.shapes import KNOWN_DIMS

    dims = {k: v for k, v in KNOWN_DIMS[arch].items() if k != "checkpoint"}
    return {**dims, "max_position_embeddings": REAL_CONTEXT[arch]}


_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, max_position_embeddings=1024)
TINY_DIMS = {"qwen2": {**_TINY, "tie_word_embeddings": True}, "qwen3": {**_TINY, "tie_word_embeddings": True},
             "llama": {**_TINY, "tie_word_embeddings": False}}
TINY_VOCAB = 2000
SPARE_ROWS = 16  # Qwen-like stand-ins: at least this many embedding rows beyond the tokenizer, rounded up to 64
STANDIN_FORMAT = 2  # bump when the stand-in recipe changes, so cached ones are rebuilt

# Qwen2's pre-tokenizer pattern (transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX)
QWEN_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
              r"""\s+(?!\S)|\s+""")
CHATML = ("{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
QWEN2_DEFAULT_SYSTEM = ("{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful "
                        "assistant.<|im_end|>\\n' }}{%- endif %}")
CHAT_TEMPLATES = {"qwen2": QWEN2_DEFAULT_SYSTEM + CHATML, "qwen3": CHATML, "llama": None}


def _trained_bpe(texts: list[str], vocab_size: int, pre_tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocabulary, merges) of a BPE trained on `texts` split by `pre_tokenizer`. Speaker tags and masks are left
    out: like a real checkpoint's tokenizer, the stand-in meets them as new tokens (the added-token path)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet() if "ByteLevel" in repr(pre_tokenizer) else []
    tok.train_from_iterator((TAG.sub(" ", t) for t in texts),
                            trainer=trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet))
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(sorted(model["vocab"].items(), key=lambda kv: kv[1])), merges


def _train_tokenizer(arch: str, texts: list[str], vocab_size: int):
    """The library's own tokenizer class of the real checkpoint (LlamaTokenizer, Qwen2Tokenizer), built from a
    vocabulary and merges trained on local text, with the real one's special tokens, ids and behaviour (see the
    module's docstring). Built by the class itself, the folder loads with the very same pipeline."""
    from tokenizers import Regex, pre_tokenizers

    if arch == "llama":
        from transformers import LlamaTokenizer

        # sentencepiece's layout: <unk> <s> </s>, the 256 byte-fallback pieces, then the learned ones (words
        # split at spaces as sentencepiece does, so no merge spans one)
        vocab, merges = _trained_bpe(texts, vocab_size - 259, pre_tokenizers.Metaspace(prepend_scheme="first"))
        head = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
        full = {piece: i for i, piece in enumerate([*head, *(p for p in vocab if p not in head)])}
        # puts <s> before every text by itself and has no pad token, as SOLAR-10.7B-Instruct's
        return LlamaTokenizer(vocab=full, merges=merges, add_bos_token=True, add_eos_token=False)
    from transformers import Qwen2Tokenizer

    split = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    vocab, merges = _trained_bpe(texts, vocab_size, split)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               unk_token=None, additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = CHAT_TEMPLATES[arch]
    return tokenizer


def _standin_config(arch: str, size: str, tokenizer):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    dims = real_dims(arch) if size == "real" else dict(TINY_DIMS[arch])
    rows = max(dims.pop("vocab_size", 0), len(tokenizer))
    if arch != "llama":  # like the real Qwen ones (151,936 rows for 151,665 tokens): spare rows beyond the tokenizer
        rows = max(rows, -(-(len(tokenizer) + SPARE_ROWS) // 64) * 64)
    if arch == "qwen2":
        dims.pop("head_dim", None)  # Qwen2 derives it from hidden_size / num_attention_heads
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[arch]
    return cls(vocab_size=rows, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id, **dims)


def pretrain_on_text(model, tokenizer, texts: list[str], seed: int, steps: int = 150, batch: int = 16) -> None:
    """Pre-train the tiny stand-in on the language (not the task) for a few seconds: next-token prediction on the
    local texts, each ended with EOS. A real checkpoint knows Korean before it is fine-tuned; a random tiny model
    does not, and LoRA on a random base barely moves, so the smoke trials would have nothing to learn from.
    150 steps (was 300): 7-12 s a stand-in on one core instead of 16-24 s, and the trials still learn
    (tests/test_causal_lm_grid.py; measured 2026-12-02)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    eos = tokenizer.eos_token_id
    ids = [row[:63] + [eos] for row in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        pick = torch.randint(len(ids), (batch,), generator=generator).tolist()
        rows = [torch.tensor(ids[i]) for i in pick]
        inputs = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=eos)  # masked below
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
        labels = inputs.masked_fill(mask == 0, -100)
        model(input_ids=inputs, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def standin_folder(arch: str, texts: list[str], cache_dir: Path, size: str, seed: int, warm: bool) -> Path:
    """Where the stand-in of these texts and settings lives: its name includes a hash of them."""
    from trainables.trial.families.common import standin_folder as folder

    return folder(STANDIN_FORMAT, arch, texts, cache_dir, size, seed, warm)


def _seeded_on_one_thread(arch: str, size: str, tokenizer, texts: list[str], seed: int, warm: bool):
    from transformers import AutoModelForCausalLM

    from trainables.trial.families.common import seeded_on_one_thread

    with seeded_on_one_thread(seed):
        model = AutoModelForCausalLM.from_config(_standin_config(arch, size, tokenizer))
        if warm:
            pretrain_on_text(model, tokenizer, texts, seed=seed)
    return model


def build_standin(arch: str, texts: list[str], cache_dir: Path, size: str = "tiny", seed: int = 0,
                  warm_start: bool = True) -> Path:
    """Build (once) and return a folder holding a random-weight causal LM of `arch` and a local tokenizer; the
    same texts give byte-identical files. Tiny stand-ins are warm-started unless `warm_start=False`."""
    from trainables.trial.families.common import build_once, save_standin

    warm = size == "tiny" and warm_start
    target = standin_folder(arch, texts, cache_dir, size, seed, warm)

    def build() -> Path:
        import torch
        from transformers import AutoModelForCausalLM

        tokenizer = _train_tokenizer(arch, texts, TINY_VOCAB)
        if size != "tiny" and torch.cuda.is_available():  # real size (benchmarks): random bf16 weights on the GPU
            torch.manual_seed(seed)
            with torch.device("cuda"):
                model = AutoModelForCausalLM.from_config(_standin_config(arch, size, tokenizer), dtype=torch.bfloat16)
        else:
            model = _seeded_on_one_thread(arch, size, tokenizer, texts, seed, warm)
        return save_standin(model, tokenizer, target, arch, size)

    return build_once(target, build)
