"""How a decoder-only model's rows are built: the prompt from the dialogue, then the summary, then one EOS.

A causal LM reads one sequence and learns to continue it. Each training row is

    prompt ids (the dialogue in the chat template or the plain template)  +  summary ids  +  EOS
    labels:  -100 for every prompt token                                  summary ids     EOS

so the loss covers the summary and its end, never the prompt. `probe_prompt` decides once per tokenizer and config
what the prompt looks like and records it (eff_framing):

- the template: the tokenizer's chat template where it has one and `prompt.chat_template` is true (a Jinja string
  there is a chat template of the config's own), else `prompt.template`, in which `{dialogue}` stands for the
  dialogue and `{system}` for `prompt.system`. The input prefix (tokenizer.input_prefix) goes right before the
  dialogue, inside the user's message. The rendered prompt is kept as the text before the dialogue (`head`) and
  after it (`tail`), so training, predict and export all build the same string: head + dialogue + tail;
- BOS: where the tokenizer puts one before every text by itself (Llama's) and the template does not write one, the
  head begins with it; a template that writes BOS itself (Llama-3's) gets no second one. The whole string is then
  tokenized without the tokenizer's own additions, exactly as `apply_chat_template(..., tokenize=True)` does;
- EOS: the token that ends an assistant turn in the chat template where the tokenizer or the generation config
  names it as an end (Qwen's `<|im_end|>`, Llama-3's `<|eot_id|>`), else the tokenizer's EOS; never a constant;
- truncation: a prompt longer than tokenizer.encoder_max_len loses the end of its dialogue (the template, the
  system message and the prefix are kept whole); the summary has its own budget, tokenizer.decoder_max_len
  (EOS included), so the prompt never eats into it;
- the pad token is never the EOS (the model's loader adds a dedicated one where the tokenizer has none), so no
  padding rule can mask the real EOS out of the labels.

Knows nothing of Ray, data files or the Trainer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from trainables.errors import UserError

if TYPE_CHECKING:
    from trainables.config import ExperimentConfig

MARKER = "\u27e6dialogue\u27e7"  # stands in for the dialogue while a template is rendered
# The pad token model.load_tokenizer adds where a tokenizer has none (most decoder-only ones) or pads with its EOS: a
# token of its own, so no padding rule can mask the real EOS out of the labels. Special, so decoding strips it.
PAD_TOKEN = "<pad>"


class PromptError(UserError, ValueError):
    """A prompt that can't work: a template without the dialogue, or no room left for the dialogue."""


@dataclass(frozen=True)
class PromptFraming:
    style: str  # "chat template" | "custom chat template" | "plain template"
    head: str  # the prompt's text before the dialogue: BOS where the model expects one, system message, prefix
    tail: str  # after the dialogue, up to where the summary starts
    generation_prompt: str  # the end of `tail` that the chat template adds for add_generation_prompt ("" if none)
    eos_id: int
    pad_id: int
    bos_id: int | None
    eos_token: str
    notes: tuple[str, ...] = ()

    # -- encoding -------------------------------------------------------------------------------------

    def encode_prompts(self, tokenizer, dialogues: Sequence[str], max_len: int) -> list[list[int]]:
        """Prompt ids of each dialogue, at most `max_len`: the dialogue's end cut where the whole is too long."""
        ids = _encode(tokenizer, [self.head + d + self.tail for d in dialogues])
        return [row if len(row) <= max_len else self._cut(tokenizer, d, max_len) for row, d in zip(ids, dialogues)]

    def _cut(self, tokenizer, dialogue: str, max_len: int) -> list[int]:
        """The prompt with the dialogue cut at a token boundary so that the whole, tokenized as one string (as
        apply_chat_template tokenizes it), fits `max_len`."""
        ends = [end for _, end in tokenizer(dialogue, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
        keep = len(ends)
        ids = _encode(tokenizer, [self.head + dialogue + self.tail])[0]
        while True:
            keep -= len(ids) - max_len
            if keep <= 0:
                raise PromptError(f"the prompt's fixed part ({self.fixed_tokens(tokenizer)} tokens: template, system "
                                  f"message, input prefix) leaves no room for the dialogue within "
                                  f"tokenizer.encoder_max_len {max_len}; raise encoder_max_len or shorten the template")
            ids = _encode(tokenizer, [self.head + dialogue[:ends[keep - 1]] + self.tail])[0]
            if len(ids) <= max_len:
                return ids

    def fixed_tokens(self, tokenizer) -> int:
        """Tokens of the prompt without a dialogue."""
        return len(_encode(tokenizer, [self.head + self.tail])[0])

    def encode_summaries(self, tokenizer, summaries: Sequence[str], max_len: int) -> list[list[int]]:
        """Summary ids, cut to fit `max_len` with exactly one EOS at the end."""
        if max_len < 2:
            raise PromptError(f"tokenizer.decoder_max_len {max_len} leaves no room for a summary before its EOS")
        return [row[:max_len - 1] + [self.eos_id] for row in _encode(tokenizer, list(summaries))]

    def training_rows(self, tokenizer, dialogues: Sequence[str], summaries: Sequence[str], prompt_max: int,
                      summary_max: int) -> tuple[list[list[int]], list[list[int]]]:
        """(input ids, labels): prompt + summary + EOS, the prompt's labels -100."""
        prompts = self.encode_prompts(tokenizer, dialogues, prompt_max)
        targets = self.encode_summaries(tokenizer, summaries, summary_max)
        return ([p + t for p, t in zip(prompts, targets)], [[-100] * len(p) + t for p, t in zip(prompts, targets)])

    # -- generation and decoding ------------------------------------------------------------------------

    def generation_settings(self) -> dict[str, Any]:
        """What generate() must stop and pad with: the EOS the labels taught, the pad token."""
        return {"eos_token_id": self.eos_id, "pad_token_id": self.pad_id, "bos_token_id": self.bos_id}

    def apply_to(self, model) -> None:
        """Set the model's generation config (every generate() reads it) and its config's pad id."""
        model.generation_config.update(**self.generation_settings())
        model.config.pad_token_id = self.pad_id

    def summary_ids(self, row) -> list[int]:
        """Generated new tokens up to the first EOS, without padding."""
        ids = [int(i) for i in row]
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return [i for i in ids if i >= 0 and i != self.pad_id]

    def decode(self, tokenizer, rows) -> list[str]:
        """Rows of generated new tokens -> cleaned summaries: special tokens stripped, speaker tags and masks kept."""
        from trainables.metrics import clean_summary

        rows = rows.tolist() if hasattr(rows, "tolist") else rows
        texts = tokenizer.batch_decode([self.summary_ids(r) for r in rows], skip_special_tokens=True)
        return [clean_summary(t, list(tokenizer.all_special_tokens)) for t in texts]

    # -- records ----------------------------------------------------------------------------------------

    def describe(self) -> str:
        """One line for eff_framing and `check`."""
        shown = json.dumps(self.head + "{dialogue}" + self.tail, ensure_ascii=False)
        return (f"causal_lm, {self.style}: prompt {shown[:160]}{'…' if len(shown) > 160 else ''}; labels: summary + "
                f"{self.eos_token} (eos {self.eos_id}), prompt masked; pad {self.pad_id}, bos {self.bos_id}; "
                "generation left-padded, stops at eos")


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of whole strings, without the tokenizer's own BOS/EOS (the head holds BOS where it belongs)."""
    return tokenizer(texts, add_special_tokens=False, return_token_type_ids=False)["input_ids"]


# ---------------------------------------------------------------------------------------------------
# Deciding the framing


def _messages(system: str | None, user: str, assistant: str | None = None) -> list[dict[str, str]]:
    out = [{"role": "system", "content": system}] if system else []
    out.append({"role": "user", "content": user})
    return out + ([{"role": "assistant", "content": assistant}] if assistant is not None else [])


def chat_template_of(tokenizer, exp: ExperimentConfig) -> tuple[str | None, str]:
    """(the chat template to use or None for the plain template, the style's name)."""
    wish = (exp.prompt or _default_prompt()).chat_template
    if isinstance(wish, str):
        return wish, "custom chat template"
    if wish and getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template, "chat template"
    return None, "plain template"


def _default_prompt():
    from trainables.config import PromptSection

    return PromptSection()


def _split(rendered: str, where: str, exp: ExperimentConfig) -> tuple[str, str]:
    if rendered.count(MARKER) != 1:
        raise PromptError(f"{exp.name}: {where} does not contain the dialogue exactly once (it rendered "
                          f"{json.dumps(rendered.replace(MARKER, '{dialogue}'), ensure_ascii=False)[:200]}); "
                          "fix the template, or set prompt.chat_template: false to use prompt.template")
    head, tail = rendered.split(MARKER)
    return head, tail


def render_parts(tokenizer, exp: ExperimentConfig) -> tuple[str, str, str, str]:
    """(style, head, tail, generation prompt) of the config's prompt for this tokenizer, BOS not yet decided."""
    prompt = exp.prompt or _default_prompt()
    prefix = exp.tokenizer.input_prefix
    template, style = chat_template_of(tokenizer, exp)
    if template is None:
        text = prompt.template.replace("{system}", prompt.system or "")
        head, tail = _split(text.replace("{dialogue}", MARKER), "prompt.template", exp)
        return style, head + prefix, tail, ""
    messages = _messages(prompt.system, prefix + MARKER)
    try:
        with_gen = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
        without = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=False)
    except Exception as err:  # a Jinja error, or a template that refuses these roles
        raise PromptError(f"{exp.name}: the {style} can't render a user message ({type(err).__name__}: {err}); "
                          "set prompt.chat_template: false to use prompt.template") from None
    head, tail = _split(with_gen, f"the {style}", exp)
    _, tail_without = _split(without, f"the {style}", exp)
    generation = tail[len(tail_without):] if tail.startswith(tail_without) else ""
    return style, head, tail, generation


def special_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens, those its added tokens mark special included (ChatML's, Llama-3's)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if getattr(token, "special", False)}


def turn_end(tokenizer, template: str | None, system: str | None) -> tuple[int, str | None]:
    """(the EOS the labels end with, a note or None): the special token that closes an assistant turn in the chat
    template (Qwen's <|im_end|>, Llama-3's <|eot_id|>), else the tokenizer's EOS (a template that closes a turn
    with text only, or none: SOLAR's)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise PromptError("the tokenizer has no eos_token: summaries could not be taught to end")
    if template is None:
        return eos, None
    try:
        text = tokenizer.apply_chat_template(_messages(system, "u", MARKER), chat_template=template, tokenize=False)
    except Exception:  # noqa: BLE001 - a template without an assistant role: the tokenizer's EOS
        return eos, None
    after = _encode(tokenizer, [text.split(MARKER, 1)[1]])[0] if MARKER in text else []
    if after and after[0] != eos and after[0] in special_ids(tokenizer):
        return after[0], (f"the chat template ends an assistant turn with {tokenizer.convert_ids_to_tokens(after[0])}: "
                          f"labels end with it, not with the tokenizer's eos {tokenizer.eos_token}")
    return eos, None


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS before every text by itself (Llama's and SOLAR's do, Qwen's have none)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("x")["input_ids"][:1] == [bos] and tokenizer(
        "x", add_special_tokens=False)["input_ids"][:1] != [bos]


def probe_prompt(tokenizer, exp: ExperimentConfig) -> PromptFraming:
    """The framing of `exp`'s prompt with `tokenizer` (its pad token already set; see model.load_tokenizer)."""
    prompt = exp.prompt or _default_prompt()
    style, head, tail, generation = render_parts(tokenizer, exp)
    notes = ["the tokenizer has no chat template: the plain prompt.template"] if (
        style == "plain template" and prompt.chat_template is True) else []
    bos = tokenizer.bos_token_id
    if bos is not None and tokenizer_adds_bos(tokenizer) and not head.startswith(tokenizer.bos_token):
        head = tokenizer.bos_token + head
        notes.append(f"{tokenizer.bos_token} put before the prompt, as the tokenizer does before every text")
    template, _ = chat_template_of(tokenizer, exp)
    eos, note = turn_end(tokenizer, template, prompt.system)
    notes += [note] if note else []
    pad = tokenizer.pad_token_id
    if pad is None or pad == eos:
        raise PromptError(f"the tokenizer's pad token is {'missing' if pad is None else 'the EOS'}: load it with "
                          "the family's load_tokenizer, which adds a dedicated one")
    if tokenizer.pad_token == PAD_TOKEN and pad >= tokenizer.vocab_size:
        notes.append(f"the tokenizer had no pad token apart from its EOS: {PAD_TOKEN} (id {pad}) added")
    framing = PromptFraming(style=style, head=head, tail=tail, generation_prompt=generation, eos_id=eos, pad_id=pad,
                            bos_id=bos, eos_token=tokenizer.convert_ids_to_tokens(eos), notes=tuple(notes))
    fixed, budget = framing.fixed_tokens(tokenizer), exp.tokenizer.encoder_max_len
    if fixed >= budget:  # `check` on a local checkpoint says so before anything runs; a trial before it loads a model
        raise PromptError(f"{exp.name}: the prompt's fixed part ({fixed} tokens: {style}, system message, input "
                          f"prefix) leaves no room for the dialogue within tokenizer.encoder_max_len {budget}; raise "
                          "encoder_max_len or shorten the template")
    return framing


def tokenize_split(frame, tokenizer, exp: ExperimentConfig, framing: PromptFraming):
    """A datasets.Dataset of input_ids/attention_mask, and labels (prompt -100, summary, one EOS) where `frame` has a
    summary column (a test frame gives prompts only); truncated as the framing says, unpadded (the collator pads)."""
    from datasets import Dataset

    tok = exp.tokenizer
    dialogues = frame["dialogue"].tolist()
    if "summary" in frame.columns:
        ids, labels = framing.training_rows(tokenizer, dialogues, frame["summary"].tolist(), tok.encoder_max_len,
                                            tok.decoder_max_len)
        columns = {"input_ids": ids, "labels": labels}
    else:
        ids = framing.encode_prompts(tokenizer, dialogues, tok.encoder_max_len)
        columns = {"input_ids": ids}
    return Dataset.from_dict({**columns, "attention_mask": [[1] * len(row) for row in ids]})
