"""Every touch of a library's private or internal API, one named function each.

Elsewhere the project uses only public names of transformers, peft, bitsandbytes and Ray; where it needs more,
it calls a function here. Each docstring says what the function reaches and why no public way does it. Each has a
canary in tests/test_compat.py that exercises the real library and, when an upgrade moves the name, fails with
"<library> <version> moved <name>: update trainables/compat.py:<function>". tests/test_structure.py checks that no
other module imports a private name or an internal module of these libraries.

Heavy libraries are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Callable

from trainables.errors import UserError
from trainables.layout import result_rows, write_atomically

# The names below, written out once: tests/test_structure.py looks for them everywhere else in trainables/.
PRIVATE_NAMES = (
    "_get_eval_sampler", "model_accepts_loss_kwargs", "get_batch_samples", "_from_model_config",
    "all_tied_weights_keys", "get_expanded_tied_weights_keys", "EncoderDecoderCache", "_attn_implementation",
    "TrainableTokensWrapper", "LoraLayer", "Params4bit", "dequantize_4bit", "quant_state",
    "_WandbLoggingActor", "_logger_actor_cls", "_start_logging_actor", "_trial_queues",
    "_signal_logging_actor_stop", "is_token_auth_enabled", "support_avx512bf16_for_cpu",
    "_TrainingRunMetadata", "_TrainingResult", "_latest_checkpoint_result", "_checkpoint_results",
    "_insert_into_sorted_list",
)


# --- transformers -----------------------------------------------------------------------------------------------

def evaluate_in_file_order(trainer_cls: type) -> type:
    """Class decorator for a Trainer subclass: its evaluation batches come in dataset order.

    Reaches `Trainer._get_eval_sampler` (transformers 5). With `train_sampling_strategy="group_by_length"`,
    transformers 5 also length-groups the evaluation batches, and predictions would no longer line up with the dev
    summaries compute_metrics scores them against. The public way, overriding `get_eval_dataloader`, means copying
    its body."""

    def _get_eval_sampler(self, eval_dataset):
        from torch.utils.data import SequentialSampler

        return SequentialSampler(eval_dataset)

    trainer_cls._get_eval_sampler = _get_eval_sampler
    return trainer_cls


def stop_passing_loss_kwargs(trainer) -> None:
    """The trainer stops handing `num_items_in_batch` to the model's forward.

    Reaches `Trainer.model_accepts_loss_kwargs` (set in Trainer.__init__ from the model's forward signature). The
    project computes the loss from the logits itself (compute_loss_func): a forward that also got the count would
    ignore it or, worse, average by it a second time. The public constructor has no switch for it."""
    trainer.model_accepts_loss_kwargs = False


def observe_training_batches(mixin_cls: type) -> type:
    """Class decorator for a Trainer mixin: each batch the training loop draws is also handed to
    `self.on_training_batches(batches)`.

    Reaches `Trainer.get_batch_samples` (transformers 5: undocumented, called once per optimizer step by the
    training loop only, never by evaluation). No callback sees the batches themselves."""

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super(mixin_cls, self).get_batch_samples(epoch_iterator, num_batches, device)
        self.on_training_batches(batches)
        return batches, num_items

    mixin_cls.get_batch_samples = get_batch_samples
    return mixin_cls


def use_generation_config_as_given(config) -> None:
    """A GenerationConfig is saved and loaded as the settings to use, not as defaults derived from config.json.

    Reaches `GenerationConfig._from_model_config`: a config built by `from_model_config` carries True, which makes a
    later load drop the settings that are not model-config fields. No public setter."""
    config._from_model_config = False


def forget_tied_weights(model) -> None:
    """After untying a model's weights: transformers 5 forgets the tying it cached at init.

    Reaches `PreTrainedModel.all_tied_weights_keys` and `get_expanded_tied_weights_keys` (transformers 5): the
    mapping save_pretrained uses to leave tied copies out of the file, computed once at init. Untied by hand,
    the stale mapping would drop the copies from the saved file. No public way recomputes it."""
    if hasattr(model, "all_tied_weights_keys"):  # transformers 4 had no cache
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)


def attention_implementation(config) -> str:
    """The attention implementation a model config resolved to ("eager", "sdpa", "flash_attention_2"; "" unknown).

    Reaches `PretrainedConfig._attn_implementation`: transformers records there what it chose when the
    model was built; the public `attn_implementation` argument only says what was asked for."""
    return str(getattr(config, "_attn_implementation", "") or "")


def self_attention_beam_cache():
    """A fresh encoder-decoder cache whose beam reorder moves only the decoder's self-attention keys/values.

    Subclasses `transformers.EncoderDecoderCache` and overrides `reorder_cache`, which transformers 5's beam search
    calls on the cache at every step. Beam search only picks among the beams of one dialogue, whose
    cross-attention keys/values (one encoder output repeated per beam) are equal: reordering them copies equal rows,
    58% of an evaluation's GPU kernel time in the H100 profile. No public option skips it."""
    from transformers import DynamicCache

    return _self_attention_reorder_cache_class()(DynamicCache(), DynamicCache())


@functools.cache
def _self_attention_reorder_cache_class():
    from transformers import EncoderDecoderCache

    class SelfAttentionReorderCache(EncoderDecoderCache):
        def reorder_cache(self, beam_idx):
            self.self_attention_cache.reorder_cache(beam_idx)

    return SelfAttentionReorderCache


# --- peft ---------------------------------------------------------------------------------------------------------

def is_trainable_tokens_layer(module) -> bool:
    """Whether `module` is the wrapper peft puts around a layer whose new-token rows train (trainable_token_indices).

    Reaches `peft.utils.other.TrainableTokensWrapper`: peft exports the tuner (`TrainableTokensModel`), not the
    wrapper it places in a LoRA model; the project asks which layers really got one."""
    from peft.utils.other import TrainableTokensWrapper

    return isinstance(module, TrainableTokensWrapper)


def is_lora_layer(module) -> bool:
    """Whether `module` is a peft LoRA layer (a base layer plus its adapters).

    Reaches `peft.tuners.lora.LoraLayer`, the base class of every LoRA layer kind; peft's top level exports only
    the config and model classes."""
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


# --- bitsandbytes -------------------------------------------------------------------------------------------------

def is_4bit_param(param) -> bool:
    """Whether `param` is a bitsandbytes 4-bit weight (two values per stored byte), without importing bitsandbytes.

    Reaches the class name `bitsandbytes.nn.Params4bit`: importing bitsandbytes only to ask would load its native
    library in processes that never quantize."""
    return type(param).__name__ == "Params4bit"


def dequantized_weight(param):
    """A 4-bit weight (is_4bit_param) as a plain tensor of its base's dtype.

    Reaches `bitsandbytes.functional.dequantize_4bit` and `Params4bit.quant_state`: bitsandbytes' modules
    dequantize only inside their forward; the merged copy and export need the weight itself."""
    import bitsandbytes.functional as bnbf

    return bnbf.dequantize_4bit(param.data, param.quant_state)


def keep_4bit_cpu_compute_as_configured(model) -> None:
    """Every 4-bit linear layer of `model` computes in its own compute dtype on the CPU, in eval mode too.

    Reaches `bitsandbytes.nn.Linear4bit.support_avx512bf16_for_cpu` (bitsandbytes 0.50: an undocumented instance
    flag, no public switch). On a CPU with AVX512-BF16, a Linear4bit's first eval-mode forward without gradients
    repacks its weight in place into a CPU-only layout and from then on multiplies in bfloat16, whatever its compute
    dtype (the project's is float32 on the CPU). Measured on the 2-core CI machine, bitsandbytes 0.50.2: the logits of
    a 4-bit mT5 stand-in 7.6e-3 (relative) off the same model computed in float32, BART's 3.4e-4; dequantize_4bit
    then misreads the repacked weight (a merged copy made after an evaluation 1.2 off for mT5, 0.14 for BART), and
    training after an evaluation runs through a kernel without autograd (BART: RuntimeError in the bias add).
    Nothing changes on a GPU: the flag is read only for CPU inputs."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def import_bitsandbytes() -> None:
    """Import bitsandbytes (where it is installed and not yet imported) with its torch.compile wrappers made at
    their first call instead of as it loads.

    bitsandbytes 0.50 wraps some default-backend kernels in torch.compile at import (backends/default/ops.py,
    `_try_torch_compile`), and making those wrappers imports torch._inductor: 1.95 s of CPU in every process that
    imports peft (peft.helpers imports bitsandbytes), a trial's included (benchmarks/trial_imports.py). A CPU trial never calls them (its backend
    registers its own kernels; after a whole smoke trial torch._inductor was still not imported). Deferred, each is
    compiled by the same torch.compile with the same options when first called, and one that fails to compile
    runs as written, as bitsandbytes' own wrapper does."""
    import importlib
    import importlib.util
    import sys

    if "bitsandbytes" in sys.modules or importlib.util.find_spec("bitsandbytes") is None:
        return
    import torch

    real = torch.compile
    torch.compile = compile_on_first_call(real)
    try:
        importlib.import_module("bitsandbytes")
    finally:
        torch.compile = real


def compile_on_first_call(compile_fn: Callable) -> Callable:
    """A stand-in for torch.compile (`compile_fn`) whose functions are compiled when first called (see
    import_bitsandbytes); a compile that raises leaves the function as written."""

    def deferred(fn=None, **options):
        if fn is None:  # used as @torch.compile(**options)
            return lambda f: deferred(f, **options)
        compiled = []

        @functools.wraps(fn)
        def call(*args, **kwargs):
            if not compiled:
                try:
                    compiled.append(compile_fn(fn, **options))
                except Exception:  # noqa: BLE001 - what bitsandbytes' _try_torch_compile does at import
                    compiled.append(fn)
            return compiled[0](*args, **kwargs)

        return call

    return deferred


# --- Ray ----------------------------------------------------------------------------------------------------------

def wandb_logging_actor_base() -> type:
    """The class of Ray's per-trial W&B logging actor, to subclass.

    Reaches `ray.air.integrations.wandb._WandbLoggingActor` (ray 2.60): its constructor takes
    (logdir, queue, exclude, to_config, *args, **kwargs) and hands args/kwargs to wandb.init. Ray offers no public
    hook to run code in the actor before wandb.init."""
    from ray.air.integrations.wandb import _WandbLoggingActor

    return _WandbLoggingActor


def wandb_logging_actors(actor_cls: type, actor_kwargs: Callable[[Any], dict[str, Any]],
                         while_starting: Callable[[], Any]) -> Callable[[type], type]:
    """Class decorator for a WandbLoggerCallback subclass: its logging actors are `actor_cls`, each built with
    `actor_kwargs(callback)` added to its keyword arguments, and started inside the context `while_starting()`.

    Reaches `WandbLoggerCallback._logger_actor_cls` and `_start_logging_actor` (ray 2.60). Ray copies the driver's
    WANDB_API_KEY into the actor's runtime_env, which it logs in plain text; no public option stops that, chooses
    the actor class, or adds constructor arguments."""

    def decorate(callback_cls: type) -> type:
        start = callback_cls._start_logging_actor

        def _start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs):
            with while_starting():
                start(self, trial, exclude_results, **actor_kwargs(self), **wandb_init_kwargs)

        callback_cls._logger_actor_cls = actor_cls
        callback_cls._start_logging_actor = _start_logging_actor
        return callback_cls

    return decorate


def stop_wandb_logging_actors(callback) -> None:
    """Tell every trial's W&B logging actor of `callback` (a WandbLoggerCallback) to finish its run now.

    Reaches `WandbLoggerCallback._trial_queues` and `_signal_logging_actor_stop` (ray 2.60). A stopped experiment
    (Ctrl-C, SIGTERM) ends no trial, so Ray never tells their actors to finish and waits its whole upload timeout
    (30 min) for them; the public `log_trial_end` would also mark the W&B runs as finished trials."""
    for trial in list(getattr(callback, "_trial_queues", {})):
        try:
            callback._signal_logging_actor_stop(trial=trial)
        except Exception:  # noqa: BLE001 - an actor already gone needs no stop
            pass


def ray_token_auth_enabled(environ: dict[str, str]) -> bool:
    """Whether the Ray dashboard asks for a token (local Ray 2.60 turns token authentication on by default).

    Reaches `ray._private.authentication.authentication_utils.is_token_auth_enabled`: Ray has no public query for
    it. If the module moved, falls back to the documented switch RAY_AUTH_MODE=token in `environ`."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        return bool(is_token_auth_enabled())
    except Exception:  # noqa: BLE001 - older/newer Ray: the documented variable
        return environ.get("RAY_AUTH_MODE", "").lower() == "token"


def ray_checkpoint_loggers() -> tuple[str, ...]:
    """The names of the loggers that print Ray Train's "Checkpoint successfully created at" once per report.

    They live in Ray's internal modules `ray.train._internal.storage` (Tune's path) and
    `ray.train.v2._internal.execution.storage` (Train v2); Ray has no public verbosity switch for them."""
    return ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage")


# Tune's driver-state files in an experiment folder (ray 2.60: the CKPT_FILE_TMPL of TuneController,
# BasicVariantGenerator, SearchGenerator, Searcher and CallbackList), and how each is read back on resume.
TUNE_STATE_FILES = (("experiment_state-*.json", "json"), ("basic-variant-state-*.json", "pickle"),
                    ("search_gen_state-*.json", "pickle"), ("searcher-state-*.pkl", "pickle"),
                    ("callback-states-*.pkl", "pickle"))
TUNE_RESTORE_FAILED = "Failed to restore the run state."  # TuneController.__init__'s log line (ray 2.60)


def unreadable_tune_state(experiment_dir) -> list[tuple[str, str]]:
    """(file name, why) for each of Tune's driver-state files in `experiment_dir` that can't be read back.

    Reaches the file names and formats of Tune's experiment state (internal: ray 2.60 writes the experiment state
    as JSON and the other states with cloudpickle). Tune writes them in a staging folder and then copies them into
    the experiment folder, not atomically: a driver killed during the copy leaves a cut file, and Tune's resume then
    fails (see `restore_or_raise`)."""
    from pathlib import Path

    damaged = []
    for pattern, kind in TUNE_STATE_FILES:
        for path in sorted(Path(experiment_dir).glob(pattern)):
            why = _unreadable(path, kind)
            if why:
                damaged.append((path.name, why))
    return damaged


def _unreadable(path, kind: str) -> str | None:
    import json

    import ray.cloudpickle

    try:
        if kind == "json":
            json.loads(path.read_text(encoding="utf-8"))
        else:
            with path.open("rb") as f:
                ray.cloudpickle.load(f)
    except Exception as err:  # noqa: BLE001 - any failure to read it back is the finding
        return f"{type(err).__name__}: {err}"
    return None


def deleted_latest_checkpoints(experiment_dir) -> dict[str, str]:
    """{trial id: folder} for each trial whose latest checkpoint, as Tune's newest saved experiment state records
    it (what a resume restores that trial from), is not in `experiment_dir` any more.

    Reaches Tune's experiment-state layout (internal, ray 2.60: each trial's run metadata and its checkpoint
    manager). Tune deletes a checkpoint that fell out of the kept ones as soon as a newer one is registered, but
    saves its state only every few seconds: a driver killed in between leaves a state whose latest checkpoint is
    gone, and that trial fails its restore ("Could not recover from checkpoint as it does not exist on storage
    anymore"; ray-project/ray#27790). Paths are read relative to `experiment_dir` (a moved experiment is restored
    from where it is now). `repoint_deleted_latest_checkpoints` mends such a state."""
    import json

    _, state = _newest_experiment_state(experiment_dir)
    gone = {}
    for trial_state, run_metadata in state["trial_data"] if state else ():
        latest = _deleted_latest(experiment_dir, _run_metadata(run_metadata))
        if latest is not None:
            gone[json.loads(trial_state)["trial_id"]] = str(_here(experiment_dir, latest.checkpoint.path))
    return gone


def repoint_deleted_latest_checkpoints(experiment_dir) -> tuple[list[tuple[str, str, str | None]], str | None]:
    """Point each trial that deleted_latest_checkpoints names at its newest checkpoint still in `experiment_dir`
    that a whole row of its result.json names (Tune writes that row only after the checkpoint is stored, so a
    folder a kill cut short is never chosen), or at none (the trial then starts over). Returns ([(trial id, the
    deleted folder's name, the chosen folder's name or None)], the saved copy of the state as it was, or None when
    nothing needed mending; the state is then left untouched).

    Reaches what deleted_latest_checkpoints reaches, and rewrites it: the checkpoint manager's
    `_latest_checkpoint_result` and `_checkpoint_results` (ray.train._internal.checkpoint_manager, ray 2.60;
    `register_checkpoint`, the public way in, would delete folders) and `_TrainingResult`. Tune has no public way
    to restore a trial from a checkpoint other than the one its state records. The state file is replaced whole
    (written beside it, then renamed); the old one is kept as `<name>.before-resume`, which Tune does not read."""
    import json
    import shutil

    path, state = _newest_experiment_state(experiment_dir)
    mended = []
    for entry in state["trial_data"] if state else ():
        metadata = _run_metadata(entry[1])
        latest = _deleted_latest(experiment_dir, metadata)
        if latest is None:
            continue
        chosen = _repoint(experiment_dir, metadata)
        entry[1] = metadata.get_json_state()
        mended.append((json.loads(entry[0])["trial_id"], Path(latest.checkpoint.path).name, chosen))
    if not mended:
        return [], None
    backup = path.with_name(path.name + ".before-resume")
    shutil.copy2(path, backup)
    write_atomically(path, json.dumps(state))
    return mended, str(backup)


def _deleted_latest(experiment_dir, metadata):
    """The trial's latest checkpoint result in its run metadata when that folder is gone from `experiment_dir`, or
    None (it is there, or the trial has none)."""
    latest = metadata.checkpoint_manager.latest_checkpoint_result
    return latest if latest is not None and not _here(experiment_dir, latest.checkpoint.path).is_dir() else None


def _repoint(experiment_dir, metadata) -> str | None:
    """Point one trial's run metadata, whose latest checkpoint is gone, at its newest checkpoint left that a whole
    result row names (or at none); drop the gone ones from its kept list. Returns the chosen folder's name."""
    from ray.train import Checkpoint
    from ray.train._internal.checkpoint_manager import _insert_into_sorted_list
    from ray.train._internal.session import _TrainingResult

    manager = metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result
    recorded = Path(latest.checkpoint.path)  # in the form the state uses (Tune rebases it on restore)
    rows = _checkpointed_rows(_here(experiment_dir, recorded).parent)
    newest = max((name for name in rows if _here(experiment_dir, recorded.parent / name).is_dir()), default=None)
    chosen = (_TrainingResult(checkpoint=Checkpoint(str(recorded.parent / newest), latest.checkpoint.filesystem),
                              metrics=rows[newest]) if newest else None)
    kept = [r for r in manager._checkpoint_results if _here(experiment_dir, r.checkpoint.path).is_dir()]
    if chosen is not None and all(Path(r.checkpoint.path).name != newest for r in kept):
        if manager._checkpoint_config.checkpoint_score_attribute in chosen.metrics:
            _insert_into_sorted_list(kept, chosen, key=manager._get_checkpoint_score)
        else:
            kept.append(chosen)
    manager._checkpoint_results = kept
    manager._latest_checkpoint_result = chosen
    metadata.checkpoint_manager = manager  # drops the metadata's cached JSON
    return newest


def _newest_experiment_state(experiment_dir):
    """(path, parsed JSON) of Tune's newest experiment_state-*.json in `experiment_dir` (the one a resume reads;
    Tune names them by time), or (None, None)."""
    import json

    states = sorted(Path(experiment_dir).glob("experiment_state-*.json"))
    return (states[-1], json.loads(states[-1].read_text(encoding="utf-8"))) if states else (None, None)


def _run_metadata(json_state: str):
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    return _TrainingRunMetadata.from_json_state(json_state)


def _here(experiment_dir, recorded) -> Path:
    """A trial's file as Tune's state records it (`.../<trial folder>/<name>`), in `experiment_dir` as it is now."""
    recorded = Path(recorded)
    return Path(experiment_dir) / recorded.parent.name / recorded.name


def _checkpointed_rows(trial_dir) -> dict[str, dict[str, Any]]:
    """{checkpoint folder name: its result row} from the whole rows of a trial's result.json."""
    return {row["checkpoint_dir_name"]: row for row in result_rows(trial_dir) if row.get("checkpoint_dir_name")}


def staged_tune_state(experiment_name: str, file_name: str) -> list[str]:
    """Whole copies of one driver-state file in Ray's session folders on this machine, newest first.

    Reaches the layout of Ray's session folder (internal, ray 2.60: `<temp>/ray/session_*/artifacts/<time>/<name>/
    driver_artifacts/`, the temp root RAY_TMPDIR or /tmp). Tune writes each file there atomically before copying it
    out, so the killed run's copy is whole until the machine restarts or Ray cleans its sessions (a later resume's
    session holds the cut copy it read back: only copies that read back are listed)."""
    import glob
    import os
    from pathlib import Path

    kind = next(k for pattern, k in TUNE_STATE_FILES if Path(file_name).match(pattern))
    root = os.environ.get("RAY_TMPDIR") or "/tmp"
    found = {os.path.realpath(p) for p in glob.glob(os.path.join(
        root, "ray", "session_*", "artifacts", "*", experiment_name, "driver_artifacts", file_name))}
    whole = [p for p in found if _unreadable(Path(p), kind) is None]
    return sorted(whole, key=os.path.getmtime, reverse=True)


class TuneRestoreFailed(UserError, RuntimeError):
    """Tune could not restore an experiment's saved state (the cause is chained); launch.resume_grid words it."""


class _RaiseOnRestoreFailure:
    def filter(self, record) -> bool:
        if record.getMessage() == TUNE_RESTORE_FAILED:
            cause = record.exc_info[1] if record.exc_info else None
            raise TuneRestoreFailed(f"{type(cause).__name__}: {cause}" if cause else TUNE_RESTORE_FAILED) from cause
        return True


@contextlib.contextmanager
def restore_or_raise():
    """Inside this context a Tune resume that can't read its saved state raises TuneRestoreFailed.

    Reaches TuneController's logger and its log line "Failed to restore the run state." (ray 2.60): on that failure
    Tune logs the line and starts the experiment over, with the param_space that Tuner.restore does not keep, so
    each new trial gets an empty config (and ours fail at their first key). FailureConfig(fail_fast=True) would
    raise instead, but it also ends a run at its first failed trial, and a restored Tuner's RunConfig can't change."""
    import logging

    logger = logging.getLogger("ray.tune.execution.tune_controller")
    guard = _RaiseOnRestoreFailure()
    logger.addFilter(guard)
    try:
        yield
    finally:
        logger.removeFilter(guard)
