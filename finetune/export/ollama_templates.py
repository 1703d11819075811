"""The shipped chat templates in Ollama's Go-template syntax, and matching a model's template to one.

Ollama renders a Modelfile's TEMPLATE with `.Messages` (every message, system ones included,
each with `.Role` and `.Content`) and `.System` (the system text). When a request has no system
message, Ollama inserts the Modelfile's SYSTEM as one: that is how a template's default system
prompt is reproduced. llama.cpp prepends bos itself when the GGUF says `add_bos_token`, so a
template writes the bos text only when the tokenizer does not add it.

Go templates cannot trim strings: the llama3 and gemma templates trim message content in Jinja
and do not here, which differs only for content that starts or ends with whitespace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jinja2

from data_templates.chat_templates import TEMPLATES

_FIRST_USER_SYSTEM = '{{ if and $.System (eq $i 1) }}{{ $.System }}\n\n{{ end }}'


def _chatml(bos: str, eos: str) -> str:
    return "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"


def _llama3(bos: str, eos: str) -> str:
    return (bos + "{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
            "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n")


def _mistral(bos: str, eos: str) -> str:
    return (bos + '{{ range $i, $m := .Messages }}{{ if eq .Role "user" }}[INST] ' + _FIRST_USER_SYSTEM
            + '{{ .Content }} [/INST]{{ else if eq .Role "assistant" }}{{ .Content }}' + eos + "{{ end }}{{ end }}")


def _gemma(bos: str, eos: str) -> str:
    return (bos + '{{ range $i, $m := .Messages }}{{ if eq .Role "user" }}<start_of_turn>user\n' + _FIRST_USER_SYSTEM
            + '{{ .Content }}<end_of_turn>\n{{ else if eq .Role "assistant" }}<start_of_turn>model\n'
            "{{ .Content }}<end_of_turn>\n{{ end }}{{ end }}<start_of_turn>model\n")


def _phi3(bos: str, eos: str) -> str:
    return "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"


def _alpaca(bos: str, eos: str) -> str:
    # The preamble is the default SYSTEM; an assistant turn is always followed by a user turn in a
    # prompt, so its "\n\n" separator is written after the reply rather than before the next user.
    return ('{{ range .Messages }}{{ if eq .Role "system" }}{{ .Content }}\n\n{{ else if eq .Role "user" }}'
            '### Instruction:\n{{ .Content }}\n\n{{ else if eq .Role "assistant" }}### Response:\n{{ .Content }}'
            + eos + "\n\n{{ end }}{{ end }}### Response:\n")


def _completion(bos: str, eos: str) -> str:
    return '{{ range .Messages }}{{ if eq .Role "assistant" }}{{ .Content }}' + eos + "{{ else }}{{ .Content }}\n{{ end }}{{ end }}"


GO_TEMPLATES: dict[str, Callable[[str, str], str]] = {
    "chatml": _chatml, "llama3": _llama3, "mistral": _mistral, "gemma": _gemma,
    "phi3": _phi3, "alpaca": _alpaca, "completion": _completion,
}

# Conversations a template must render identically on to count as a shipped one: with and
# without system, one and several turns, always ending on the user (a generation prompt).
_U1, _A1, _U2 = ({"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
                 {"role": "user", "content": "And 3+3?"})
_SYS = {"role": "system", "content": "You are terse."}
CONVERSATIONS: list[list[dict[str, str]]] = [[_U1], [_SYS, _U1], [_U1, _A1, _U2], [_SYS, _U1, _A1, _U2]]
_SENTINEL = "\x00ft-system\x00"


def render(tokenizer: Any, source: str, messages: list[dict[str, str]]) -> str | None:
    """The Jinja template rendered as a generation prompt, or None when it refuses the conversation."""
    try:
        return str(tokenizer.apply_chat_template(messages, chat_template=source, tokenize=False,
                                                 add_generation_prompt=True))
    except (jinja2.TemplateError, ValueError, TypeError, KeyError, IndexError):
        return None


def _default_system(tokenizer: Any, own: str, shipped: str, conv: list[dict[str, str]]) -> str | None:
    """The system text X such that `own(conv) == shipped([system X] + conv)`, if there is one."""
    mine = render(tokenizer, own, conv)
    probe = render(tokenizer, shipped, [{"role": "system", "content": _SENTINEL}, *conv])
    if mine is None or probe is None or probe.count(_SENTINEL) != 1:
        return None
    pre, post = probe.split(_SENTINEL)
    if len(mine) > len(pre) + len(post) and mine.startswith(pre) and mine.endswith(post):
        text = mine[len(pre):len(mine) - len(post)]
        return text if render(tokenizer, shipped, [{"role": "system", "content": text}, *conv]) == mine else None
    return None


def _matches(tokenizer: Any, own: str, shipped: str) -> tuple[bool, str | None]:
    """(does `own` render like `shipped` on every test conversation, its default system text)."""
    default: str | None = None
    for conv in CONVERSATIONS:
        mine = render(tokenizer, own, conv)
        if mine is None:
            return False, None
        if conv[0]["role"] != "system":
            found = _default_system(tokenizer, own, shipped, conv)
            if found is not None and default in (None, found):
                default = found
                continue
        if default is not None and conv[0]["role"] != "system" or render(tokenizer, shipped, conv) != mine:
            return False, None
    return True, default


def match_template(tokenizer: Any, own: str) -> tuple[str | None, str | None]:
    """(shipped template name the Jinja `own` renders like, default system text), or (None, None)."""
    for name, shipped in TEMPLATES.items():
        ok, default = _matches(tokenizer, own, shipped.source)
        if ok:
            return name, default
    return None, None
