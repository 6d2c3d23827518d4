"""What every model family shares: the machine, the settings decided for it, and where a checkpoint comes from.

Every decision that depends on the machine (precision, 4-bit, Unsloth, device) is made once, in
`decide_settings`, and returned as an `EffectiveSettings` record that the trial reports with its metrics.
Loading, LoRA, stand-ins and framing are the model family's (trainables.trial.families); this module only
knows the 4-bit loading arguments every family passes to from_pretrained.

Knows nothing of Ray or of data files.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainables.errors import UserError
from trainables.trial.families import family_of

if TYPE_CHECKING:
    from trainables.config import ExperimentConfig, QLoraSection

log = logging.getLogger(__name__)


class ModelUnavailable(UserError):
    """The config's checkpoint can't be had here (no hub access, not cached, not a folder)."""


def folder_architecture_problem(checkpoint: str, architecture: str) -> str | None:
    """The family's architecture_problem for a checkpoint folder on disk, from its config.json (no weights
    loaded); a hub id is checked when the trial loads it."""
    config = Path(checkpoint).expanduser() / "config.json"
    if not config.is_file():
        return None
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None  # an unreadable config.json fails with its own message when the model loads
    return family_of(architecture).architecture_problem(architecture, model_type, checkpoint)


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


@dataclass(frozen=True)
class EffectiveSettings:
    """What really ran, as opposed to what the config asked for. Reported with every result.

    Decided once (decide_settings) and frozen: what is learned later, the framing, the model's loading, an OOM
    back-off's batch, comes as a new record (dataclasses.replace: recipe.settings_as_run, with_batch)."""

    device: str
    precision: str  # "bf16" | "fp16" | "fp32"
    load_in_4bit: bool
    lora: bool
    unsloth: bool  # trained through Unsloth's FastLanguageModel (trainables.trial.unsloth); the reason either way
    unsloth_reason: str
    model_source: str
    train_batch_size: int
    gradient_accumulation_steps: int
    notes: tuple[str, ...] = ()
    framing: str = ""  # BOS/EOS framing probed from the tokenizer (the family's framing)
    token_rows: str = ""  # which token rows train for the added tokens, and how
    family: str = ""  # the model family that ran it (trainables.trial.families): "seq2seq", "causal_lm"

    def with_batch(self, train_batch_size: int, gradient_accumulation_steps: int, note: str) -> "EffectiveSettings":
        """The same settings at another micro-batch (the OOM back-off), saying why."""
        return replace(self, train_batch_size=train_batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
                       notes=(*self.notes, note))

    def as_metrics(self) -> dict[str, Any]:
        d = asdict(self)
        d["notes"] = " | ".join(self.notes)
        return {f"eff_{k}": v for k, v in d.items()}


def decide_settings(exp: ExperimentConfig, env: Environment, model_source: str) -> EffectiveSettings:
    """Turn the config's wishes into what this machine can honestly do, noting each change."""
    arch = exp.model.architecture
    family = family_of(arch)
    t, q = exp.training, exp.qlora
    notes: list[str] = []

    if not env.cuda:
        precision = "fp32"
        if t.fp16 or t.bf16:
            notes.append("no CUDA GPU: mixed precision off, fp32 on the CPU")
    elif t.fp16 and family.fp16_overflows(arch):
        precision = "bf16" if env.bf16_supported else "fp32"
        notes.append(f"fp16 asked for a {arch} model, which overflows in fp16: running {precision}")
    elif t.bf16 and not env.bf16_supported:
        precision = "fp32" if family.fp16_overflows(arch) else "fp16"
        notes.append(f"bf16 asked for, but {env.device_name} has no bf16: running {precision}")
    else:
        precision = "bf16" if t.bf16 else "fp16" if t.fp16 else "fp32"

    load_in_4bit = q.use_qlora and q.load_in_4bit
    if load_in_4bit and not env.bitsandbytes_installed:
        load_in_4bit = False
        notes.append("bitsandbytes not installed: 4-bit quantization off, LoRA on the full-precision base")

    accelerated = unsloth_decision(exp, family.name, env)
    if q.use_unsloth:
        notes.append(f"unsloth {'on' if accelerated.use else 'off'}: {accelerated.reason}")

    return EffectiveSettings(
        device="cuda" if env.cuda else "cpu",
        precision=precision,
        load_in_4bit=load_in_4bit,
        lora=q.use_qlora,
        unsloth=accelerated.use,
        unsloth_reason=accelerated.reason,
        model_source=model_source,
        train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        notes=tuple(notes),
        family=family.name,
    )


def unsloth_decision(exp: ExperimentConfig, family: str, env: Environment):
    """trainables.trial.unsloth.decide for this machine. Unsloth counts as importable only where it already is:
    a trial's entry point imports it before transformers (trainables.trial.entry); a process that imported
    transformers first can't have its patches, and says so."""
    import sys

    from trainables.trial import unsloth

    first = "unsloth" not in sys.modules
    return unsloth.decide(exp, family, env.cuda, env.unsloth_installed, transformers_first=first)


# ---------------------------------------------------------------------------------------------------
# Finding a model: a real checkpoint (a stand-in: the family's build_standin)


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


# ---------------------------------------------------------------------------------------------------
# Loading: the 4-bit arguments every family's from_pretrained takes (the rest: trainables.trial.families)


def _torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}.get(
        name, torch.float32
    )


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


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
