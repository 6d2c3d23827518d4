"""What an exported causal-LM folder needs beyond the merged weights: a chat template that renders the very prompt
training used, so that plain transformers reproduces predict's summaries:

    ids = tokenizer.apply_chat_template([{"role": "user", "content": dialogue}], add_generation_prompt=True)
    summary = tokenizer.decode(model.generate(**ids)[0][len(ids["input_ids"][0]):], skip_special_tokens=True)

The template is written from the trial's framing (prompt.py), whatever the base had: the base's chat template
rendered with the config's system message and input prefix, or the plain template where the base has none or the
config asked for it, with BOS where training put one. Only the last user message's content is the dialogue;
system and assistant messages given to it are ignored (the system message is the one the model trained with).
"""

from __future__ import annotations

import json

PROBE = "#Person1#: 안녕하세요, 무엇을 도와드릴까요?\n#Person2#: 내일 오후 4시에 가능할까요?"


def _literal(text: str) -> str:
    """A Jinja string expression printing `text` exactly (Jinja reads Python-style escapes in string literals)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"


def chat_template_for(framing) -> str:
    """A Jinja chat template rendering `framing`'s prompt around the last user message's content."""
    user_tail = framing.tail[:len(framing.tail) - len(framing.generation_prompt)]
    return ("{%- for message in messages -%}{%- if message['role'] == 'user' and loop.last -%}"
            + _literal(framing.head) + "{{ message['content'] }}" + _literal(user_tail)
            + "{%- endif -%}{%- endfor -%}{%- if add_generation_prompt -%}" + _literal(framing.generation_prompt)
            + "{%- endif -%}")


def set_chat_template(tokenizer, framing) -> None:
    """Give the tokenizer the training prompt as its chat template, and check that apply_chat_template then gives
    the ids training and predict build (a template that rendered anything else would silently change every
    summary)."""
    tokenizer.chat_template = chat_template_for(framing)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": PROBE}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"]
    expected = framing.encode_prompts(tokenizer, [PROBE], 10**9)[0]
    if list(rendered) != expected:
        raise RuntimeError(f"the exported chat template renders other ids than training's prompt: {list(rendered)[:20]} "
                           f"!= {expected[:20]}")
