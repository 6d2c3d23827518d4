"""What `check` (and every run, before Ray starts) knows about a decoder-only config from the config alone.

Static: no torch, no transformers. The traps that need the checkpoint's tokenizer (a chat template that drops the
dialogue, a template that leaves no room for it) are `prompt_problems`, run where the tokenizer is on disk.

Lengths for a causal LM (the same fields as for seq2seq, so a grid reads alike):
- tokenizer.encoder_max_len: the prompt's tokens at most: template, system message, input prefix and dialogue (the
  dialogue's end is cut to fit; the rest is kept whole), at training and at generation alike;
- tokenizer.decoder_max_len: the summary's tokens at most, its EOS included (as seq2seq's labels);
- a training row is at most their sum; generation adds at most generation.max_length new tokens to a prompt.
  Both must fit the model's context (config.json's max_position_embeddings), or the summary has no room.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from trainables.trial.families.causal_lm.names import ARCHITECTURES, EMBEDDING_NAMES, LINEAR_NAMES, PROJECTIONS

if TYPE_CHECKING:
    from trainables.config import ExperimentConfig

PROBE = "#Person1#: 안녕하세요. probe 1"
SEQ2SEQ_TYPES = frozenset({"t5", "mt5", "bart"})
# Layer names of the seq2seq family's models that a decoder-only one lacks: a config copied from the seven
SEQ2SEQ_LAYER_NAMES = frozenset({"q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo", "out_proj", "fc1", "fc2", "shared"})


def render_custom_template(template: str, system: str | None, user: str) -> str:
    """A config's own Jinja chat template rendered the way transformers renders chat templates (sandboxed,
    trim_blocks, lstrip_blocks), with a generation prompt: static, for `check`."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token="<s>",
                                            eos_token="</s>")


def context_length(checkpoint: str) -> int | None:
    """max_position_embeddings of the checkpoint's config.json: a folder's, or a hub id's already in the local
    Hugging Face cache (no download); None where neither is on disk (the trial checks the loaded model)."""
    config = Path(checkpoint).expanduser() / "config.json"
    if not config.is_file() and not Path(checkpoint).expanduser().exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(checkpoint, "config.json")
        except Exception:  # noqa: BLE001 - not a valid hub id: checkpoint_problem says so
            cached = None
        config = Path(cached) if isinstance(cached, str) else config
    try:
        return int(json.loads(config.read_text(encoding="utf-8"))["max_position_embeddings"]) if config.is_file() else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def room_problem(exp: ExperimentConfig, context: int | None) -> str | None:
    """Why a full prompt leaves no room for the summary within the model's context, or None."""
    tok, gen = exp.tokenizer, exp.generation
    longest = tok.encoder_max_len + max(tok.decoder_max_len, gen.max_length)
    if context is None or longest <= context:
        return None
    return (f"{exp.name}: a full prompt (tokenizer.encoder_max_len {tok.encoder_max_len}) leaves no room for the summary "
            f"(decoder_max_len {tok.decoder_max_len}, generation.max_length {gen.max_length}) within the model's "
            f"{context} positions; lower encoder_max_len to at most {context - max(tok.decoder_max_len, gen.max_length)}")


def lora_target_names(architecture: str) -> set[str]:
    return set(LINEAR_NAMES | EMBEDDING_NAMES)


def fp16_overflows(architecture: str) -> bool:
    """Llama and Qwen train in fp16 where a card has no bf16 (with the Trainer's loss scaling)."""
    return False


def architecture_problem(architecture: str, model_type: str | None, checkpoint: str) -> str | None:
    """Why a checkpoint whose config.json says `model_type` can't run as `architecture`, or None. Each decoder-only
    architecture is its own model type: a Mistral or Gemma checkpoint is not a llama, though its layers look alike."""
    if model_type is None or model_type == architecture:
        return None
    known = model_type in ARCHITECTURES or model_type in SEQ2SEQ_TYPES
    return (f"model.checkpoint {checkpoint} is a {model_type} model, but model.architecture says {architecture}; "
            + (f"set model.architecture to {model_type}" if known else
               f"{model_type} is not a family this project trains (decoder-only: {', '.join(sorted(ARCHITECTURES))})")
            + ", or point model.checkpoint at a model of that architecture")


def _target_problem(exp: ExperimentConfig) -> str | None:
    bad = [t for t in exp.qlora.target_modules if t not in lora_target_names(exp.model.architecture)]
    if not exp.qlora.use_qlora or not bad:
        return None
    seq2seq = [t for t in bad if t in SEQ2SEQ_LAYER_NAMES]
    return (f"{exp.name}: qlora.target_modules {bad} match no module of a {exp.model.architecture} model; use names "
            f"from {sorted(LINEAR_NAMES)}" + (f" ({', '.join(seq2seq)}: layers of seq2seq models; a decoder-only "
                                              f"model's projections are {', '.join(PROJECTIONS)})" if seq2seq else ""))


def _template_problem(exp: ExperimentConfig) -> str | None:
    prompt = exp.prompt
    if prompt is None or not isinstance(prompt.chat_template, str):
        return None
    try:
        rendered = render_custom_template(prompt.chat_template, prompt.system, PROBE)
    except Exception as err:  # noqa: BLE001 - any Jinja error is the user's template
        return (f"{exp.name}: prompt.chat_template is not a usable Jinja template ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); fix it, or use true or false")
    if rendered.count(PROBE) != 1:
        return (f"{exp.name}: prompt.chat_template does not put the user's message (the dialogue) in the prompt exactly "
                "once; render the user message's content (message['content'])")
    return None


def static_problems(exp: ExperimentConfig) -> tuple[list[str], list[str]]:
    """(errors, warnings) of a decoder-only config: LoRA targets no module has (seq2seq layer names among them), a
    custom chat template without the dialogue, a prompt that leaves no room for the summary, an n-gram ban that
    reaches into the prompt."""
    problems = [_target_problem(exp), _template_problem(exp), room_problem(exp, context_length(exp.model.checkpoint))]
    warnings = []
    if exp.generation.no_repeat_ngram_size:
        warnings.append(f"{exp.name}: generation.no_repeat_ngram_size {exp.generation.no_repeat_ngram_size} on a "
                        "decoder-only model also counts the prompt (as transformers does): no n-gram of the dialogue "
                        "can appear in the summary; 0 is the usual value")
    return [p for p in problems if p], warnings
