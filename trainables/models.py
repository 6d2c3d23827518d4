"""Models and tokenizers: the real checkpoint or an offline stand-in, LoRA/QLoRA, and precision decisions.

Every decision that depends on the machine (precision, 4-bit, Unsloth, device) is made once, in
`decide_settings`, and returned as an `EffectiveSettings` record that the trial reports with its metrics.

Stand-ins: model hubs are unreachable offline, so `--mode smoke` (and the real-size GPU benchmark) build a
model of the same family (T5, mT5, BART config classes) with random weights and a tokenizer trained on the
local data, and save it as an ordinary Hugging Face model folder. From there on the stand-in is loaded with
the same `from_pretrained` code as a real checkpoint.

Knows nothing of Ray or of data files beyond the texts handed to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from trainables.errors import UserError
from trainables.metrics import TAG

if TYPE_CHECKING:
    from trainables.config import ExperimentConfig, QLoraSection

log = logging.getLogger(__name__)

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
STANDIN_FORMAT = 4  # bump when the stand-in recipe changes, so cached ones are rebuilt
T5_FAMILY = ("t5", "mt5")


class ModelUnavailable(UserError):
    """The config's checkpoint can't be had here (no hub access, not cached, not a folder)."""


class WrongArchitecture(UserError):
    """The config's model.architecture is not the family of the checkpoint it names."""


def architecture_problem(architecture: str, model_type: str | None, checkpoint: str) -> str | None:
    """Why a checkpoint of `model_type` (its config.json) can't run as `architecture`, or None. T5 and mT5 are one
    family here (the same layers and LoRA names); BART against either is not: LoRA targets, precision and framing
    would all be decided for the wrong model."""
    if model_type is None:
        return None
    family = {"mt5": "t5"}.get(architecture, architecture)
    found = {"mt5": "t5"}.get(model_type, model_type)
    if found == family:
        return None
    return (f"model.checkpoint {checkpoint} is a {model_type} model, but model.architecture says {architecture}; "
            f"set model.architecture to {model_type if model_type in ('t5', 'mt5', 'bart') else 'its family'}, "
            "or point model.checkpoint at a model of that family")


def folder_architecture_problem(checkpoint: str, architecture: str) -> str | None:
    """architecture_problem for a checkpoint folder on disk, from its config.json (no weights loaded); a hub id
    is checked when the trial loads it."""
    config = Path(checkpoint).expanduser() / "config.json"
    if not config.is_file():
        return None
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None  # an unreadable config.json fails with its own message when the model loads
    return architecture_problem(architecture, model_type, checkpoint)


# ---------------------------------------------------------------------------------------------------
# The machine, and the settings that follow from it


@dataclass
class Environment:
    cuda: bool
    bf16_supported: bool
    device_name: str
    unsloth_installed: bool
    bitsandbytes_installed: bool

    @classmethod
    def probe(cls) -> "Environment":
        import importlib.util

        import torch

        cuda = torch.cuda.is_available()
        return cls(
            cuda=cuda,
            bf16_supported=bool(cuda and torch.cuda.is_bf16_supported()),
            device_name=torch.cuda.get_device_name(0) if cuda else "cpu",
            unsloth_installed=importlib.util.find_spec("unsloth") is not None,
            bitsandbytes_installed=importlib.util.find_spec("bitsandbytes") is not None,
        )


@dataclass
class EffectiveSettings:
    """What really ran, as opposed to what the config asked for. Reported with every result."""

    device: str
    precision: str  # "bf16" | "fp16" | "fp32"
    load_in_4bit: bool
    lora: bool
    unsloth: bool  # always False (see unsloth_reason): kept so every result says so
    unsloth_reason: str
    model_source: str
    train_batch_size: int
    gradient_accumulation_steps: int
    notes: list[str] = field(default_factory=list)
    speed: Any = None  # trainables.speed.SpeedPlan, once planned
    framing: str = ""  # BOS/EOS framing probed from the tokenizer (trainables.framing)
    token_rows: str = ""  # which token rows train for the added tokens, and how

    def with_batch(self, train_batch_size: int, gradient_accumulation_steps: int, note: str) -> "EffectiveSettings":
        """The same settings at another micro-batch (the OOM back-off), saying why."""
        return replace(self, train_batch_size=train_batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
                       notes=[*self.notes, note])

    def as_metrics(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "speed"}
        d["notes"] = " | ".join(self.notes)
        return {**{f"eff_{k}": v for k, v in d.items()}, **(self.speed.as_metrics() if self.speed else {})}


def unsloth_reason(requested: bool, arch: str, env: Environment) -> str:
    """Why Unsloth is off. Its fast paths are for decoder-only models; for encoder-decoder ones it falls back to
    plain transformers (or fails), so no family here is ever routed through it."""
    if not requested:
        return "not requested"
    if not env.cuda:
        return "no CUDA GPU (Unsloth needs one)"
    if not env.unsloth_installed:
        return "unsloth not installed (optional extra: pip install '.[unsloth]')"
    return f"Unsloth has no encoder-decoder fast path for {arch}; plain transformers + peft"


def decide_settings(exp: ExperimentConfig, env: Environment, model_source: str) -> EffectiveSettings:
    """Turn the config's wishes into what this machine can honestly do, noting each change."""
    arch = exp.model.architecture
    t, q = exp.training, exp.qlora
    notes: list[str] = []

    if not env.cuda:
        precision = "fp32"
        if t.fp16 or t.bf16:
            notes.append("no CUDA GPU: mixed precision off, fp32 on the CPU")
    elif t.fp16 and arch in T5_FAMILY:
        precision = "bf16" if env.bf16_supported else "fp32"
        notes.append(f"fp16 asked for a {arch} model, which overflows in fp16: running {precision}")
    elif t.bf16 and not env.bf16_supported:
        precision = "fp32" if arch in T5_FAMILY else "fp16"
        notes.append(f"bf16 asked for, but {env.device_name} has no bf16: running {precision}")
    else:
        precision = "bf16" if t.bf16 else "fp16" if t.fp16 else "fp32"

    load_in_4bit = q.use_qlora and q.load_in_4bit
    if load_in_4bit and not env.bitsandbytes_installed:
        load_in_4bit = False
        notes.append("bitsandbytes not installed: 4-bit quantization off, LoRA on the full-precision base")

    reason = unsloth_reason(q.use_unsloth, arch, env)
    if q.use_unsloth:
        notes.append(f"unsloth off: {reason}")

    return EffectiveSettings(
        device="cuda" if env.cuda else "cpu",
        precision=precision,
        load_in_4bit=load_in_4bit,
        lora=q.use_qlora,
        unsloth=False,
        unsloth_reason=reason,
        model_source=model_source,
        train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------------
# Finding a model: a real checkpoint, or a stand-in built here


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tune_main7"


def checkpoint_problem(checkpoint: str) -> str | None:
    """Why `model.checkpoint` can be neither a local folder nor a hub id, or None (no download, no network)."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return None if (path / "config.json").exists() else (
            f"model.checkpoint {checkpoint}: a folder without config.json, not a saved Hugging Face model; "
            "point it at the folder save_pretrained wrote")
    looks_like_path = checkpoint.startswith(("/", "./", "../", "~")) or "\\" in checkpoint or checkpoint.count("/") > 1
    if looks_like_path:
        return (f"model.checkpoint {checkpoint}: no such folder ({path.absolute()}); fix the path, or use a hub id "
                "such as digit82/kobart-summarization")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(checkpoint)
    except HFValidationError:
        return (f"model.checkpoint {checkpoint!r}: neither a folder on disk nor a valid hub id (owner/name, letters, "
                "digits, - _ .); fix the folder path or the id")
    return None


def check_real_model(checkpoint: str) -> str:
    """Return a path or hub id that `from_pretrained` can load, or raise ModelUnavailable saying why."""
    problem = checkpoint_problem(checkpoint)
    if problem:  # not the hub's "Repo id must be ..." with a download hint for a filesystem path
        raise ModelUnavailable(problem)
    if Path(checkpoint).is_dir():
        if not (Path(checkpoint) / "config.json").exists():
            raise ModelUnavailable(f"{checkpoint} is a folder without config.json, not a saved Hugging Face model")
        return str(Path(checkpoint).resolve())
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(checkpoint)
    except Exception as err:  # OSError, connection errors, HF's own errors: all mean "can't have it"
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ModelUnavailable(
            f"model {checkpoint!r} can't be loaded: {reason}\n"
            f"  Fix: download it where the hub is reachable (huggingface-cli download {checkpoint}; set HF_TOKEN "
            "for gated models) and either copy the Hugging Face cache here or set model.checkpoint to the local "
            "folder; or run `python tune_main7.py --mode smoke`, which uses offline stand-in models."
        ) from None
    return checkpoint


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


def _warm_start(model, tokenizer, texts: list[str], seed: int, steps: int = 300, batch: int = 16) -> None:
    """Pre-train the tiny stand-in on the language (not the task) for a few seconds.

    A real checkpoint knows Korean before it is fine-tuned; a random tiny model does not, and LoRA on a
    random base barely moves (measured: loss 7.3 -> 7.2 over 3 epochs of the sample data). So the stand-in
    first learns to reconstruct the local texts from a copy with 15% of its tokens deleted: it learns the
    words, not how to summarize, and the fine-tuning that follows has something real to improve."""
    import torch

    from trainables.framing import probe_framing

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
    from transformers import AutoModelForSeq2SeqLM

    warm = size == "tiny" and warm_start
    digest = hashlib.sha256(json.dumps([STANDIN_FORMAT, arch, size, seed, warm, texts]).encode()).hexdigest()[:12]
    target = Path(cache_dir) / "standins" / f"{arch}-{size}{'' if warm or size != 'tiny' else '-cold'}-{digest}"
    if (target / "config.json").exists():
        return target
    import torch

    tokenizer = _train_tokenizer(arch, texts, TINY_VOCAB)
    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(_standin_config(arch, size, tokenizer))
    if arch in T5_FAMILY:
        # Real T5/mT5 checkpoints have an output head of their own; transformers 5 ties it whatever the config
        # says, so untie it here and save it (from_pretrained keeps a head stored apart untied).
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * model.config.d_model**-0.5)
    if warm:
        _warm_start(model, tokenizer, texts, seed=seed)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if arch in T5_FAMILY:
        config_file = tmp / "config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "tie_word_embeddings": False}, indent=2))
    (tmp / "STANDIN.json").write_text(json.dumps({"architecture": arch, "size": size, "random_weights": True}))
    try:
        tmp.rename(target)  # atomic: a concurrent builder can't see a half-written folder
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------------
# Loading for training: tokenizer with the competition's tokens, model, LoRA/QLoRA


def load_tokenizer(model_path: str, special_tokens: list[str]):
    """The checkpoint's tokenizer plus the speaker/mask tokens, added as ordinary tokens so that
    decoding with skip_special_tokens=True keeps them (the references contain them)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.add_tokens([t for t in special_tokens if t not in tokenizer.get_vocab()], special_tokens=False)
    return tokenizer


def project_token_ids(tokenizer, special_tokens: list[str]) -> list[int]:
    """Ids of the tokens the project added to `tokenizer`: those beyond its own vocabulary (`vocab_size`, its
    length before any token was added), whatever the model's row count. Real mT5 has 250,112 rows for
    250,100 tokens, so these ids can lie inside the existing rows and no resize tells them apart."""
    ids = tokenizer.convert_tokens_to_ids(list(special_tokens))
    return sorted({i for i in ids if i is not None and i >= tokenizer.vocab_size})


def _torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}.get(
        name, torch.float32
    )


def grow_vocabulary(model, tokenizer, seed: int) -> int:
    """Give the model rows for the tokenizer's added tokens; return the old vocabulary size.

    The new rows are drawn at random (around the old rows' mean). Seeding the draw makes training and
    `predict` create the same rows, so a rebuilt model matches the one that was evaluated even where no
    adapter stores those rows (an output head tied to the embeddings)."""
    import torch

    old_vocab = model.get_input_embeddings().num_embeddings
    if not _head_is_tied(model):
        # transformers 5 forces tie_word_embeddings=True on (m)T5 configs even where the checkpoint's own output
        # head loaded untied (real T5/mT5 ones). Say what the weights are, whether or not the vocabulary grows:
        # resizing would otherwise tie the head to the embeddings (replacing it), and peft, trusting the flag,
        # skips the head's trainable_token_indices as "tied" (the added tokens' output rows never trained).
        model.config.tie_word_embeddings = False
    if len(tokenizer) > old_vocab:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.resize_token_embeddings(len(tokenizer))
    return old_vocab


def _head_is_tied(model) -> bool:
    # Check the weights, not the config flag: transformers 5 forces tie_word_embeddings=True on (m)T5 configs
    # while a checkpoint with its own lm_head tensor (mT5 XLSum) still loads it separately.
    output = model.get_output_embeddings()
    return output is None or output.weight is model.get_input_embeddings().weight


def quantized_loading(qlora: QLoraSection, precision: str, device: str) -> dict[str, Any]:
    """`from_pretrained` arguments for a 4-bit base: NF4/FP4, double quantization, and a compute dtype the
    run can use (the config's bf16 only where the run is in bf16; fp32 on the CPU)."""
    from transformers import BitsAndBytesConfig

    compute = qlora.bnb_4bit_compute_dtype
    if precision == "fp32" or device == "cpu":
        compute = "float32"
    elif compute == "bfloat16" and precision != "bf16":
        compute = "float16"
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=qlora.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=qlora.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=_torch_dtype(compute),
        ),
        "device_map": {"": 0 if device == "cuda" else "cpu"},
    }


def resolve_lora_targets(model, targets: list[str], notes: list[str]) -> list[str]:
    """Every LoRA target must match a module; the seed's `wi` on mT5 silently matched nothing.

    In transformers 5.24, once the vocabulary has grown (resize_token_embeddings, for the speaker tokens),
    (m)T5's encoder/decoder `embed_tokens` are the very module `shared`, which peft then finds only under
    that name: `embed_tokens` is mapped to `shared` there, with a note. Without a resize they stay modules
    of their own and the name is kept."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    resolved = []
    for target in targets:
        if target == "embed_tokens" and target not in names and "shared" in names:
            notes.append("LoRA target embed_tokens is the shared embedding in this model: targeting `shared`")
            target = "shared"
        resolved.append(target)
    missing = [t for t in resolved if t not in names]
    if missing:
        raise ValueError(f"LoRA target_modules {missing} match no module of this model; it has {sorted(names)}")
    return resolved


def load_model(exp: ExperimentConfig, model_path: str, tokenizer, settings: EffectiveSettings):
    """The seq2seq model for training, with 4-bit quantization and a LoRA adapter as the settings say."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    t = exp.training
    kwargs = quantized_loading(exp.qlora, settings.precision, settings.device) if settings.load_in_4bit else {}
    model = AutoModelForSeq2SeqLM.from_pretrained(model_path, dtype=torch.float32, **kwargs)
    problem = architecture_problem(exp.model.architecture, getattr(model.config, "model_type", None), model_path)
    if problem:
        raise WrongArchitecture(problem)
    grow_vocabulary(model, tokenizer, t.seed)
    new_token_ids = project_token_ids(tokenizer, exp.tokenizer.special_tokens)

    if settings.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.gradient_checkpointing)
    elif t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()

    if not settings.lora:
        settings.token_rows = _describe_rows(new_token_ids, "full fine-tuning trains every row")
        return model
    return _with_lora(model, exp.qlora, new_token_ids, settings)


def _with_lora(model, q: QLoraSection, new_token_ids: list[int], settings: EffectiveSettings):
    """The LoRA adapter on the config's targets, plus the added tokens' rows trained; records which rows train."""
    from peft import LoraConfig, TaskType, get_peft_model

    targets = resolve_lora_targets(model, q.target_modules, settings.notes)
    rank = min(q.lora_rank, model.config.d_model)
    if rank != q.lora_rank:
        settings.notes.append(f"LoRA rank {q.lora_rank} capped to the model width {rank}")
    token_targets = _token_targets(model, targets, new_token_ids)
    adapted = [t for t in ("embed_tokens", "shared", "lm_head") if t in targets]
    lora = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        r=rank,
        lora_alpha=q.lora_alpha,
        lora_dropout=q.lora_dropout,
        target_modules=targets,
        # New tokens' embedding rows start untrained and LoRA would leave them frozen: train those rows only,
        # on the input embeddings and on the output head (untied in T5/mT5).
        trainable_token_indices=token_targets or None,
    )
    model = get_peft_model(model, lora)
    # Record the rows peft really made trainable, not the ones asked for: it skips a layer it takes for tied
    # (it trusts config.tie_word_embeddings), and such a head's added rows would silently never train.
    from peft.utils.other import TrainableTokensWrapper

    wrapped = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, TrainableTokensWrapper)}
    trained = [t for t in token_targets if t in wrapped]
    skipped = [t for t in token_targets if t not in wrapped]
    if skipped:
        settings.notes.append(f"peft left the added tokens' rows of {'+'.join(skipped)} untrained")
    how = ([f"rows trained in {'+'.join(trained)}"] if trained else []) + (
        [f"LoRA on {'+'.join(adapted)}"] if adapted else []) + ([f"untrained in {'+'.join(skipped)}"] if skipped else [])
    settings.token_rows = _describe_rows(new_token_ids, "; ".join(how))
    return model


def _describe_rows(ids: list[int], how: str) -> str:
    """eff_token_rows: the added tokens' ids and how their rows are trained."""
    if not ids:
        return "no added tokens"
    span = f"{ids[0]}-{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) else ",".join(map(str, ids))
    return f"{len(ids)} added token rows {span}: {how}"


def _token_targets(model, lora_targets: list[str], new_ids: list[int]) -> dict[str, list[int]]:
    """peft's trainable_token_indices: the added tokens' rows of the input embeddings, and of the output head
    where it is untied (T5/mT5), except where LoRA already adapts that layer."""
    if not new_ids:
        return {}
    targets = {"embed_tokens": new_ids}
    if not _head_is_tied(model) and "lm_head" not in lora_targets:
        targets["lm_head"] = new_ids
    skip = {"embed_tokens", "shared"} & set(lora_targets)  # LoRA on the embeddings already adapts those rows
    return {k: v for k, v in targets.items() if k not in lora_targets and not (k == "embed_tokens" and skip)}


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
