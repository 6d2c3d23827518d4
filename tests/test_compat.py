"""Canaries for trainables/compat.py: each runs one compat function against the installed library (tiny models,
no network, no Ray cluster) and, where an upgrade moved what the function reaches, fails naming the library's
version and the function to update."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect

import pytest

from tests.conftest import ROOT
from trainables import compat


def moved(library: str, name: str, function: str) -> str:
    return (f"{library} {importlib.metadata.version(library)} moved {name}: "
            f"update trainables/compat.py:{function}")


# --- tiny objects ----------------------------------------------------------------------------------------------

def tiny_t5(**overrides):
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = dict(vocab_size=40, d_model=16, d_ff=32, d_kv=8, num_layers=1, num_decoder_layers=1, num_heads=2,
               decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, attn_implementation="eager")
    import torch

    torch.manual_seed(0)
    return T5ForConditionalGeneration(T5Config(**{**cfg, **overrides})).eval()


def tiny_rows(lengths):
    """Rows with input_ids of the given lengths (1-based ids, so no padding inside a row)."""
    from datasets import Dataset

    return Dataset.from_list([{"input_ids": list(range(2, 2 + n)), "attention_mask": [1] * n,
                               "labels": [3, 4, 1]} for n in lengths])


def tiny_trainer(tmp_path, trainer_cls=None, **args):
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    class NoTokenizer:  # DataCollatorForSeq2Seq pads through a tokenizer; these rows need only its pad
        pad_token_id = 0
        padding_side = "right"

        def pad(self, features, **kw):
            import torch

            width = max(len(f["input_ids"]) for f in features)
            return {k: torch.tensor([f[k] + [0] * (width - len(f[k])) for f in features])
                    for k in ("input_ids", "attention_mask")}

    model = tiny_t5()
    training = Seq2SeqTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no",
                                        per_device_train_batch_size=2, per_device_eval_batch_size=1,
                                        disable_tqdm=True, **args)
    return (trainer_cls or Seq2SeqTrainer)(model=model, args=training, data_collator=DataCollatorForSeq2Seq(
        NoTokenizer(), model=model, label_pad_token_id=-100))


# --- transformers ----------------------------------------------------------------------------------------------

def test_evaluate_in_file_order(tmp_path):
    from transformers import Seq2SeqTrainer, Trainer

    assert "eval_dataset" in inspect.signature(getattr(Trainer, "_get_eval_sampler", lambda: 0)).parameters, \
        moved("transformers", "Trainer._get_eval_sampler", "evaluate_in_file_order")

    @compat.evaluate_in_file_order
    class InOrder(Seq2SeqTrainer):
        pass

    lengths = [3, 9, 2, 7, 5, 8, 4, 6]
    trainer = tiny_trainer(tmp_path, InOrder, train_sampling_strategy="group_by_length")
    seen = [int(batch["attention_mask"].sum()) for batch in trainer.get_eval_dataloader(tiny_rows(lengths))]
    assert seen == lengths, moved("transformers", "Trainer._get_eval_sampler", "evaluate_in_file_order")


def test_stop_passing_loss_kwargs(tmp_path):
    import torch

    trainer = tiny_trainer(tmp_path)
    model, received = trainer.model, []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        received.append(set(kwargs))
        return forward(*args, **kwargs)

    model.forward = recording_forward
    batch = trainer.data_collator([tiny_rows([4])[0]])
    assert hasattr(trainer, "model_accepts_loss_kwargs"), \
        moved("transformers", "Trainer.model_accepts_loss_kwargs", "stop_passing_loss_kwargs")
    trainer.model_accepts_loss_kwargs = True
    trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(3))
    assert "num_items_in_batch" in received[-1], \
        moved("transformers", "Trainer.model_accepts_loss_kwargs", "stop_passing_loss_kwargs")
    compat.stop_passing_loss_kwargs(trainer)
    trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(3))
    assert "num_items_in_batch" not in received[-1], \
        moved("transformers", "Trainer.model_accepts_loss_kwargs", "stop_passing_loss_kwargs")


def test_observe_training_batches(tmp_path):
    from transformers import Seq2SeqTrainer

    @compat.observe_training_batches
    class Counting:
        drawn: list = []

        def on_training_batches(self, batches):
            self.drawn.append(sum(len(b["input_ids"]) for b in batches))

    class Trainer(Counting, Seq2SeqTrainer):
        pass

    trainer = tiny_trainer(tmp_path, Trainer, max_steps=2, gradient_accumulation_steps=2)
    trainer.train_dataset = tiny_rows([3, 3, 3, 3, 3, 3, 3, 3])
    trainer.train()
    assert Counting.drawn == [4, 4], moved("transformers", "Trainer.get_batch_samples", "observe_training_batches")


def test_use_generation_config_as_given():
    from transformers import GenerationConfig, T5Config

    config = GenerationConfig.from_model_config(T5Config(decoder_start_token_id=0))
    assert getattr(config, "_from_model_config", None) is True, \
        moved("transformers", "GenerationConfig._from_model_config", "use_generation_config_as_given")
    compat.use_generation_config_as_given(config)
    assert config.to_dict().get("_from_model_config") is False, \
        moved("transformers", "GenerationConfig._from_model_config", "use_generation_config_as_given")


def test_forget_tied_weights():
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    model = BartForConditionalGeneration(BartConfig(
        vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=32))
    tied = getattr(model, "all_tied_weights_keys", None)
    assert tied and tied.get("lm_head.weight") == "model.shared.weight", \
        moved("transformers", "PreTrainedModel.all_tied_weights_keys", "forget_tied_weights")
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    compat.forget_tied_weights(model)
    assert model.all_tied_weights_keys == {}, \
        moved("transformers", "PreTrainedModel.get_expanded_tied_weights_keys", "forget_tied_weights")


def test_attention_implementation():
    assert compat.attention_implementation(tiny_t5().config) == "eager", \
        moved("transformers", "PretrainedConfig._attn_implementation", "attention_implementation")


def test_self_attention_beam_cache():
    """Beam search still calls the cache's reorder_cache, and what it generates with the cache is what it generates
    with transformers' own (the cross-attention rows it leaves alone are equal per dialogue)."""
    import torch
    from transformers import EncoderDecoderCache

    model = tiny_t5(vocab_size=60)
    ids = torch.tensor([[5, 6, 7, 8, 9, 1], [10, 11, 12, 1, 0, 0]])
    mask = (ids != 0).long()
    kwargs = dict(input_ids=ids, attention_mask=mask, num_beams=3, max_new_tokens=6, do_sample=False)
    cache, calls = compat.self_attention_beam_cache(), []
    reorder = cache.reorder_cache
    cache.reorder_cache = lambda beam_idx: (calls.append(1), reorder(beam_idx))
    ours = model.generate(**kwargs, past_key_values=cache)
    assert isinstance(cache, EncoderDecoderCache) and calls, \
        moved("transformers", "EncoderDecoderCache.reorder_cache (beam search)", "self_attention_beam_cache")
    assert torch.equal(ours, model.generate(**kwargs)), \
        moved("transformers", "EncoderDecoderCache.self_attention_cache", "self_attention_beam_cache")


# --- peft ------------------------------------------------------------------------------------------------------

def test_peft_layer_kinds():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_t5(), LoraConfig(r=2, target_modules=["q", "v"], trainable_token_indices={"shared": [38, 39]}))
    lora = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if compat.is_lora_layer(m)}
    rows = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if compat.is_trainable_tokens_layer(m)}
    assert lora == {"q", "v"}, moved("peft", "peft.tuners.lora.LoraLayer", "is_lora_layer")
    assert "shared" in rows, moved("peft", "peft.utils.other.TrainableTokensWrapper", "is_trainable_tokens_layer")


# --- bitsandbytes ----------------------------------------------------------------------------------------------

def test_4bit_weights():
    import bitsandbytes as bnb
    import torch

    torch.manual_seed(0)
    weight = torch.randn(32, 64)
    layer = bnb.nn.Linear4bit(64, 32, bias=False, quant_type="nf4", compute_dtype=torch.float32)
    layer.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, quant_type="nf4")
    layer = layer.to("cpu")  # quantizes
    assert compat.is_4bit_param(layer.weight) and not compat.is_4bit_param(torch.nn.Parameter(weight)), \
        moved("bitsandbytes", "bitsandbytes.nn.Params4bit", "is_4bit_param")
    plain = compat.dequantized_weight(layer.weight)
    # NF4 keeps 16 levels per block of 64: measured 9% relative RMS error on Gaussian weights; a wrong layout is ~140%.
    error = float((plain - weight).pow(2).mean().sqrt() / weight.pow(2).mean().sqrt())
    assert plain.shape == weight.shape and error < 0.15, \
        moved("bitsandbytes", "bitsandbytes.functional.dequantize_4bit", "dequantized_weight")


def test_bitsandbytes_4bit_cpu_flag_is_where_compat_sets_it():
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(64, 64, compute_dtype=None)
    assert hasattr(layer, "support_avx512bf16_for_cpu"), \
        moved("bitsandbytes", "Linear4bit.support_avx512bf16_for_cpu", "keep_4bit_cpu_compute_as_configured")
    compat.keep_4bit_cpu_compute_as_configured(layer)
    assert layer.support_avx512bf16_for_cpu is False


# --- Ray -------------------------------------------------------------------------------------------------------

def test_wandb_logging_actor_base(tmp_path, monkeypatch):
    """The actor's constructor contract (logdir, queue, exclude, to_config, then wandb.init's arguments), checked
    through the project's subclass, built in this process without Ray."""
    from trainables.driver.wandb_logging import KeyFileLoggingActor

    base = compat.wandb_logging_actor_base()
    params = list(inspect.signature(base.__init__).parameters)
    assert params[1:5] == ["logdir", "queue", "exclude", "to_config"], \
        moved("ray", "ray.air.integrations.wandb._WandbLoggingActor.__init__", "wandb_logging_actor_base")
    key_file = tmp_path / "key"
    key_file.write_text("planted-key-1234567\n")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # the actor changes into its logdir
    actor = KeyFileLoggingActor(logdir=str(tmp_path), queue=None, exclude=[], to_config=[],
                                key_file=str(key_file), project="p")
    assert actor.kwargs["project"] == "p" and actor.kwargs["settings"].api_key == "planted-key-1234567", \
        moved("ray", "_WandbLoggingActor.kwargs (handed to wandb.init)", "wandb_logging_actor_base")


def test_wandb_logging_actors():
    import contextlib

    from ray.air.integrations.wandb import WandbLoggerCallback

    start = getattr(WandbLoggerCallback, "_start_logging_actor", None)
    assert start and list(inspect.signature(start).parameters) == ["self", "trial", "exclude_results", "wandb_init_kwargs"], \
        moved("ray", "WandbLoggerCallback._start_logging_actor", "wandb_logging_actors")
    source = inspect.getsource(start)
    assert "self._logger_actor_cls" in source and "os.environ" in source, \
        moved("ray", "WandbLoggerCallback._logger_actor_cls", "wandb_logging_actors")

    class Actor(compat.wandb_logging_actor_base()):
        pass

    entered, started = [], []

    class Callback(WandbLoggerCallback):
        pass

    Callback._start_logging_actor = lambda self, trial, exclude, **kw: started.append((trial, kw))
    decorated = compat.wandb_logging_actors(Actor, lambda cb: {"extra": 1},
                                            lambda: contextlib.nullcontext(entered.append(1)))(Callback)
    decorated(project="p")._start_logging_actor("trial", [], name="n")
    assert decorated._logger_actor_cls is Actor and started == [("trial", {"extra": 1, "name": "n"})] and entered


def test_stop_wandb_logging_actors():
    from ray.air.integrations.wandb import WandbLoggerCallback

    class Queue(list):
        put = list.append

    callback = WandbLoggerCallback(project="p")
    assert getattr(callback, "_trial_queues", None) == {}, \
        moved("ray", "WandbLoggerCallback._trial_queues", "stop_wandb_logging_actors")
    callback._trial_queues["trial"] = Queue()
    compat.stop_wandb_logging_actors(callback)
    assert len(callback._trial_queues["trial"]) == 1, \
        moved("ray", "WandbLoggerCallback._signal_logging_actor_stop", "stop_wandb_logging_actors")


def test_ray_token_auth_enabled():
    name = "ray._private.authentication.authentication_utils"
    try:
        module = importlib.import_module(name)
    except ImportError:
        module = None
    assert callable(getattr(module, "is_token_auth_enabled", None)), \
        moved("ray", f"{name}.is_token_auth_enabled", "ray_token_auth_enabled")
    assert isinstance(compat.ray_token_auth_enabled({}), bool)


@pytest.mark.parametrize("name", compat.ray_checkpoint_loggers())
def test_ray_checkpoint_loggers(name):
    try:
        found = importlib.util.find_spec(name) is not None
    except ImportError:
        found = False
    assert found, moved("ray", name, "ray_checkpoint_loggers")


# --- bitsandbytes' torch.compile wrappers, made at first call ------------------------------------------------

def test_compile_on_first_call_compiles_once_when_first_called_and_falls_back_when_compiling_fails():
    made = []

    def fake_compile(fn, **options):
        made.append((fn.__name__, options))
        return lambda *args: ("compiled", fn(*args))

    def double(x):
        return 2 * x

    deferred = compat.compile_on_first_call(fake_compile)
    wrapped = deferred(double, dynamic=False)
    decorated = deferred(dynamic=False)(double)
    assert made == [] and wrapped.__name__ == "double", "nothing is compiled before the first call"
    assert wrapped(3) == ("compiled", 6) and wrapped(4) == ("compiled", 8) and decorated(1) == ("compiled", 2)
    assert made == [("double", {"dynamic": False})] * 2, "compiled once per function, with its options"

    def failing_compile(fn, **options):
        raise RuntimeError("no compiler")

    assert compat.compile_on_first_call(failing_compile)(double)(5) == 10, "runs as written"


def test_bitsandbytes_is_imported_without_torch_inductor_and_torch_compile_is_left_as_it_was():
    """In a fresh process (this one has bitsandbytes loaded): peft after compat.import_bitsandbytes, as a trial
    imports them. Imported plainly, bitsandbytes 0.50 loads torch._inductor (its torch.compile wrappers)."""
    import subprocess
    import sys

    code = ("import sys, torch; real = torch.compile\n"
            "from trainables import compat; compat.import_bitsandbytes(); import peft\n"
            "print('bitsandbytes' in sys.modules, 'torch._inductor.compile_fx' in sys.modules, torch.compile is real)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.stdout.split() == ["True", "False", "True"], proc.stdout + proc.stderr[-2000:]
