"""Model code every family does the same way, given its transformers class: the tokenizer with the project's
added tokens, their embedding rows (grown, seeded, trained), LoRA/QLoRA on a base, and rebuilding a trained model
from a checkpoint. A family's model module calls these with its own Auto class, peft task type and checks.

Knows nothing of Ray, data files or the Trainer.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from trainables import compat
from trainables.errors import UserError
from trainables.trial.families import LoadRecord

if TYPE_CHECKING:
    from trainables.config import ExperimentConfig, QLoraSection


class WrongArchitecture(UserError):
    """The config's model.architecture is not the family of the checkpoint it names."""


def standin_folder(version: int, arch: str, texts: list[str], cache_dir: Path, size: str, seed: int,
                   warm: bool) -> Path:
    """Where a family's stand-in of these texts and settings lives: its name includes a hash of them and of the
    family's stand-in `version` (bumped when its recipe changes, so cached ones are rebuilt)."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps([version, arch, size, seed, warm, texts]).encode()).hexdigest()[:12]
    return Path(cache_dir) / "standins" / f"{arch}-{size}{'' if warm or size != 'tiny' else '-cold'}-{digest}"


def build_once(target: Path, build: Callable[[], Path]) -> Path:
    """The stand-in folder `target`, made by `build()` unless it is there already. Built under a file lock: two
    runs at once (or parallel test workers) build it once, the second waiting for the first's folder."""
    from filelock import FileLock

    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        return target if (target / "config.json").exists() else build()


@contextmanager
def seeded_on_one_thread(seed: int, one_thread: bool = True):
    """Random weights and their warm start made from `seed` on one thread: the same sums in the same order on any
    machine, so the same texts give byte-identical weights (a multi-threaded CPU sum may change with the count).
    `one_thread=False` (real-size stand-ins for benchmarks: hundreds of millions of weights) keeps all threads."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1 if one_thread else threads)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def save_standin(model, tokenizer, target: Path, arch: str, size: str, config_updates: dict | None = None) -> Path:
    """Save a built stand-in as an ordinary Hugging Face folder at `target`, atomically (written beside it, then
    renamed: a concurrent builder can't see a half-written folder); `config_updates` are written into its
    config.json after saving."""
    import json
    import os
    import shutil

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if config_updates:
        config_file = tmp / "config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **config_updates}, indent=2))
    (tmp / "STANDIN.json").write_text(json.dumps({"architecture": arch, "size": size, "random_weights": True}))
    try:
        tmp.rename(target)
    except OSError:  # another builder got there first: its folder is the same stand-in
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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


def grow_vocabulary(model, tokenizer, seed: int) -> int:
    """Give the model rows for the tokenizer's added tokens; return the old vocabulary size.

    The new rows are drawn at random (around the old rows' mean). Seeding the draw makes training and
    `predict` create the same rows, so a rebuilt model matches the one that was evaluated even where no
    adapter stores those rows (an output head tied to the embeddings)."""
    import torch

    old_vocab = model.get_input_embeddings().num_embeddings
    if not head_is_tied(model):
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


def head_is_tied(model) -> bool:
    """Whether the output head is the input embeddings. Checks the weights, not the config flag: transformers 5
    forces tie_word_embeddings=True on (m)T5 configs while a checkpoint with its own lm_head tensor (mT5 XLSum)
    still loads it separately."""
    output = model.get_output_embeddings()
    return output is None or output.weight is model.get_input_embeddings().weight


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


def load_for_training(exp: ExperimentConfig, model_path: str, tokenizer, settings, model_class, task_type: str,
                      architecture_problem: Callable[[str, str | None, str], str | None],
                      accelerator=None) -> tuple[Any, LoadRecord]:
    """`model_class`'s model for training: 4-bit as `settings` say (EffectiveSettings), checked against the
    config's architecture, vocabulary grown, gradient checkpointing, then LoRA (peft `task_type`) with the added
    tokens' rows trainable. Returns (model, what was decided).

    `accelerator` (trainables.trial.unsloth for a trial that trains through Unsloth): an object whose
    `load_base(exp, model_path, precision)` and `attach_lora(model, lora_config, exp)` replace the plain
    from_pretrained + prepare_model_for_kbit_training and peft's get_peft_model; the rest is the same code."""
    t = exp.training
    model = (accelerator.load_base(exp, model_path, settings.precision) if accelerator
             else _plain_base(exp, model_path, settings, model_class))
    problem = architecture_problem(exp.model.architecture, getattr(model.config, "model_type", None), model_path)
    if problem:
        raise WrongArchitecture(problem)
    grow_vocabulary(model, tokenizer, t.seed)
    new_token_ids = project_token_ids(tokenizer, exp.tokenizer.special_tokens)
    if accelerator is None:
        model = _prepare(model, settings.load_in_4bit, t.gradient_checkpointing)
    if not settings.lora:
        return model, LoadRecord(describe_rows(new_token_ids, "full fine-tuning trains every row"))
    attach = (lambda m, lora: accelerator.attach_lora(m, lora, exp)) if accelerator else None
    return with_lora(model, exp.qlora, new_token_ids, task_type, attach)


def _plain_base(exp: ExperimentConfig, model_path: str, settings, model_class):
    import torch

    from trainables.trial.models import quantized_loading

    kwargs = quantized_loading(exp.qlora, settings.precision, settings.device) if settings.load_in_4bit else {}
    model = model_class.from_pretrained(model_path, dtype=torch.float32, **kwargs)
    if kwargs:
        compat.keep_4bit_cpu_compute_as_configured(model)
    return model


def _prepare(model, four_bit: bool, checkpointing: bool):
    """The plain path's preparation: peft's k-bit preparation of a 4-bit base, or gradient checkpointing."""
    if four_bit:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def with_lora(model, q: QLoraSection, new_token_ids: list[int], task_type: str, attach=None) -> tuple[Any, LoadRecord]:
    """The LoRA adapter on the config's targets, plus the added tokens' rows trained; records which rows train.
    `attach(model, lora_config)`: how the adapter goes on (default peft's get_peft_model)."""
    from peft import LoraConfig, get_peft_model

    notes: list[str] = []
    targets = resolve_lora_targets(model, q.target_modules, notes)
    width = getattr(model.config, "d_model", None) or model.config.hidden_size
    rank = min(q.lora_rank, width)
    if rank != q.lora_rank:
        notes.append(f"LoRA rank {q.lora_rank} capped to the model width {rank}")
    token_targets = token_row_targets(model, targets, new_token_ids)
    adapted = [t for t in ("embed_tokens", "shared", "lm_head") if t in targets]
    lora = LoraConfig(
        task_type=task_type,
        r=rank,
        lora_alpha=q.lora_alpha,
        lora_dropout=q.lora_dropout,
        target_modules=targets,
        # New tokens' embedding rows start untrained and LoRA would leave them frozen: train those rows only,
        # on the input embeddings and on the output head (untied in T5/mT5).
        trainable_token_indices=token_targets or None,
    )
    model = attach(model, lora) if attach else get_peft_model(model, lora)
    # Record the rows peft really made trainable, not the ones asked for: it skips a layer it takes for tied
    # (it trusts config.tie_word_embeddings), and such a head's added rows would silently never train.
    wrapped = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if compat.is_trainable_tokens_layer(m)}
    trained = [t for t in token_targets if t in wrapped]
    skipped = [t for t in token_targets if t not in wrapped]
    if skipped:
        notes.append(f"peft left the added tokens' rows of {'+'.join(skipped)} untrained")
    how = ([f"rows trained in {'+'.join(trained)}"] if trained else []) + (
        [f"LoRA on {'+'.join(adapted)}"] if adapted else []) + ([f"untrained in {'+'.join(skipped)}"] if skipped else [])
    return model, LoadRecord(describe_rows(new_token_ids, "; ".join(how)), tuple(notes))


def describe_rows(ids: list[int], how: str) -> str:
    """eff_token_rows: the added tokens' ids and how their rows are trained."""
    if not ids:
        return "no added tokens"
    span = f"{ids[0]}-{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) else ",".join(map(str, ids))
    return f"{len(ids)} added token rows {span}: {how}"


def token_row_targets(model, lora_targets: list[str], new_ids: list[int]) -> dict[str, list[int]]:
    """peft's trainable_token_indices: the added tokens' rows of the input embeddings, and of the output head
    where it is untied (T5/mT5), except where LoRA already adapts that layer."""
    if not new_ids:
        return {}
    targets = {"embed_tokens": new_ids}
    if not head_is_tied(model) and "lm_head" not in lora_targets:
        targets["lm_head"] = new_ids
    skip = {"embed_tokens", "shared"} & set(lora_targets)  # LoRA on the embeddings already adapts those rows
    return {k: v for k, v in targets.items() if k not in lora_targets and not (k == "embed_tokens" and skip)}


def load_for_inference(checkpoint: Path, meta: dict[str, Any], model_class, dequantize: bool = False):
    """(model, tokenizer) rebuilt from a checkpoint folder and its trial_meta.json. `dequantize` (export): a
    4-bit base is turned back into float32 weights from its 4-bit ones, before the adapter goes on."""
    import torch
    from transformers import AutoTokenizer

    from trainables.trial.models import quantized_loading

    checkpoint = Path(checkpoint)
    exp, settings = meta["experiment"], meta.get("settings", {})
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))  # saved with the added tokens
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lora = bool(settings.get("eff_lora", (checkpoint / "adapter_config.json").exists()))
    if not lora:  # full fine-tuning: the checkpoint is the whole model
        model = model_class.from_pretrained(str(checkpoint), dtype=torch.float32).to(device)
        return model, tokenizer
    kwargs: dict[str, Any] = {}
    if settings.get("eff_load_in_4bit"):
        kwargs = quantized_loading(exp.qlora, settings.get("eff_precision", "fp32"), device)
    from peft import PeftModel

    model = model_class.from_pretrained(meta["model_path"], dtype=torch.float32, **kwargs)
    if dequantize and kwargs:
        model = model.dequantize(dtype=torch.float32)
    elif kwargs:
        compat.keep_4bit_cpu_compute_as_configured(model)  # predict computes as the trial's evaluation did
    grow_vocabulary(model, tokenizer, exp.training.seed)  # the same rows as in training, before the adapter
    if "device_map" not in kwargs:
        model = model.to(device)
    model = PeftModel.from_pretrained(model, str(checkpoint))
    return model, tokenizer
