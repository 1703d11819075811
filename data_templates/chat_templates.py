"""Shipped chat templates, declared as data, and the choice of which one a run uses.

The model's own chat template wins when it has one: it is what the model was trained on and
what inference servers will apply. The templates here serve base models that ship none. Each
is a Jinja string for `tokenizer.apply_chat_template` (transformers renders it with
`trim_blocks` and `lstrip_blocks`, so the `{%-`/`{{-` markers below strip layout whitespace)
and reproduces its model family's format; the exact strings are pinned by golden tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

# `end_of_turn` value meaning "the tokenizer's eos_token": templates that end turns with the
# `eos_token` variable (mistral, alpaca, completion) end with whatever the model's eos is.
EOS = "eos_token"


@dataclass(frozen=True)
class ChatTemplate:
    """A chat format: its Jinja source and the token string that closes an assistant turn."""

    name: str
    source: str
    description: str
    end_of_turn: str  # a literal token, or EOS for the tokenizer's eos_token
    # Literal control tokens the source writes; a tokenizer lacking them gets them added.
    special_tokens: tuple[str, ...] = ()

    def end_of_turn_for(self, tokenizer: Any) -> str:
        """The concrete end-of-turn token for this tokenizer (resolves EOS)."""
        if self.end_of_turn != EOS:
            return self.end_of_turn
        if tokenizer.eos_token is None:
            raise ValueError(f"chat template {self.name!r} ends turns with eos_token, but the tokenizer has none")
        return str(tokenizer.eos_token)


_UNKNOWN_ROLE = "{{- raise_exception('Unknown role: ' + message['role']) }}"

_CHATML = """\
{%- for message in messages %}
    {%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}
        """ + _UNKNOWN_ROLE + """
    {%- endif %}
    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}"""

# Meta's own Llama 3 Instruct template, verbatim: bos before the first header, content trimmed.
_LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Mistral Instruct (v0.1/v0.2 layout): `[INST] user [/INST]assistant</s>`. Mistral has no system
# role; like its later templates, the system prompt is prepended to the first user message.
_MISTRAL = """\
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_prefix = messages[0]['content'] + '\\n\\n' %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_prefix = '' %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {{- '[INST] ' + (system_prefix if loop.first else '') + message['content'] + ' [/INST]' }}
    {%- elif message['role'] == 'assistant' %}
        {{- message['content'] + eos_token }}
    {%- else %}
        """ + _UNKNOWN_ROLE + """
    {%- endif %}
{%- endfor %}"""

# Gemma 2/3: the assistant role is `model`, content is trimmed, and the system prompt is folded
# into the first user turn, as Gemma 3's own template does.
_GEMMA = """\
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set first_user_prefix = '' %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'assistant' %}
        {%- set role = 'model' %}
    {%- elif message['role'] == 'user' %}
        {%- set role = 'user' %}
    {%- else %}
        """ + _UNKNOWN_ROLE + """
    {%- endif %}
    {{- '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '')
        + message['content'] | trim + '<end_of_turn>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<start_of_turn>model\\n' }}
{%- endif %}"""

# Phi-3: `<|role|>\ncontent<|end|>\n`. Microsoft's template also appends eos after the last turn
# when no generation prompt is asked for; that trailer is left out because it makes a
# conversation's rendering differ from the start of a longer one, which exact masks rely on.
_PHI3 = """\
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {{- '<|system|>\\n' + message['content'] + '<|end|>\\n' }}
    {%- elif message['role'] == 'user' %}
        {{- '<|user|>\\n' + message['content'] + '<|end|>\\n' }}
    {%- elif message['role'] == 'assistant' %}
        {{- '<|assistant|>\\n' + message['content'] + '<|end|>\\n' }}
    {%- else %}
        """ + _UNKNOWN_ROLE + """
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>\\n' }}
{%- endif %}"""

# Stanford Alpaca's no-input prompt; the system message replaces its preamble. Later turns are
# separated by a blank line.
_ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
_ALPACA = """\
{%- if messages[0]['role'] == 'system' %}
    {%- set preamble = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set preamble = '""" + _ALPACA_PREAMBLE + """' %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- preamble + '\\n\\n' }}
{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
        {{- ('' if loop.first else '\\n\\n') + '### Instruction:\\n' + message['content'] + '\\n\\n' }}
    {%- elif message['role'] == 'assistant' %}
        {{- '### Response:\\n' + message['content'] + eos_token }}
    {%- else %}
        """ + _UNKNOWN_ROLE + """
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '### Response:\\n' }}
{%- endif %}"""

# Plain text for base models: system and user text each end with a newline, the assistant text
# follows directly and ends with eos. There is no generation prompt: the prompt is the text.
_COMPLETION = """\
{%- for message in messages %}
    {%- if message['role'] in ['system', 'user'] %}
        {{- message['content'] + '\\n' }}
    {%- elif message['role'] == 'assistant' %}
        {{- message['content'] + eos_token }}
    {%- else %}
        """ + _UNKNOWN_ROLE + """
    {%- endif %}
{%- endfor %}"""

TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate("chatml", _CHATML, "ChatML (Qwen, Hermes, SmolLM): <|im_start|>role ... <|im_end|>",
                     "<|im_end|>", ("<|im_start|>", "<|im_end|>")),
        ChatTemplate("llama3", _LLAMA3, "Llama 3 Instruct: <|start_header_id|>role<|end_header_id|> ... <|eot_id|>",
                     "<|eot_id|>", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
        ChatTemplate("mistral", _MISTRAL, "Mistral Instruct: [INST] user [/INST]assistant</s>", EOS),
        ChatTemplate("gemma", _GEMMA, "Gemma: <start_of_turn>user|model ... <end_of_turn>",
                     "<end_of_turn>", ("<start_of_turn>", "<end_of_turn>")),
        ChatTemplate("phi3", _PHI3, "Phi-3: <|user|> ... <|end|>",
                     "<|end|>", ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")),
        ChatTemplate("alpaca", _ALPACA, "Alpaca: ### Instruction: / ### Response:, turns end with eos", EOS),
        ChatTemplate("completion", _COMPLETION, "Plain text for base models: user text, newline, reply, eos", EOS),
    )
}


def get_template(name: str) -> ChatTemplate:
    """The shipped template called `name`."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown chat template {name!r}; shipped templates: {', '.join(sorted(TEMPLATES))}") from None


@dataclass(frozen=True)
class ResolvedTemplate:
    """What `resolve_chat_template` set on the tokenizer."""

    source: str  # where the template came from, for logs and the run manifest
    added_tokens: tuple[str, ...] = ()  # added to the tokenizer: resize the model's embeddings
    end_of_turn: str | None = None  # the token that ends an assistant turn, when known


class _GenerationTag(Extension):
    """Lets validation parse `{% generation %}` blocks, which transformers' renderer understands."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


# Same parsing options as transformers' renderer, so a template that passes here compiles there.
_ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationTag])
_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def validate_template(tokenizer: Any, source: str, where: str) -> None:
    """Raise ValueError naming `where` if `source` is not Jinja or cannot render a simple chat."""
    try:
        ast = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as err:
        raise ValueError(f"{where}: invalid Jinja at line {err.lineno}: {err.message}") from err
    # Undefined variables render as "", so a missing eos would silently drop every end of turn.
    if "eos_token" in jinja2.meta.find_undeclared_variables(ast) and tokenizer.eos_token is None:
        raise ValueError(f"{where}: ends turns with eos_token, but the tokenizer has none; give it an eos_token")
    try:
        tokenizer.apply_chat_template(_PROBE, chat_template=source, tokenize=False)
    except (jinja2.TemplateError, TypeError) as err:
        raise ValueError(f"{where}: fails to render a user/assistant exchange: {err}") from err


def _missing_tokens(tokenizer: Any, tokens: tuple[str, ...]) -> list[str]:
    """The tokens that the tokenizer does not encode as one known token."""
    missing = []
    for token in tokens:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            missing.append(token)
    return missing


def _own_template(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one is the chat format
        template = template.get("default")
    if not template:
        raise ValueError(
            "the model's tokenizer has no chat template; set model.chat_template to one of "
            f"{', '.join(sorted(TEMPLATES))} or to a path to a .jinja file"
        )
    return str(template)


def resolve_chat_template(tokenizer: Any, choice: str | None) -> ResolvedTemplate:
    """Set `tokenizer.chat_template` from `choice` and say where it came from.

    `None` keeps the model's own template; a shipped name selects that template; a path ending in
    `.jinja` reads the file. A shipped template's control tokens that the tokenizer lacks are added
    as special tokens and listed in the result, so the caller can resize the embeddings. Nothing
    on the tokenizer changes unless the template is valid.
    """
    shipped: ChatTemplate | None = None
    if choice is None:
        source, where = _own_template(tokenizer), "the model's own"
    elif choice.endswith(".jinja"):
        path = Path(choice)
        if not path.is_file():
            raise ValueError(f"chat template file {choice} does not exist")
        source, where = path.read_text(encoding="utf-8"), f"file {choice}"
        if not source.strip():
            raise ValueError(f"chat template file {choice} is empty; write the Jinja template into it, or choose "
                             f"a shipped one ({', '.join(TEMPLATES)})")
    else:
        shipped = get_template(choice)
        source, where = shipped.source, f"shipped {choice!r}"
    validate_template(tokenizer, source, where)
    if choice is not None and getattr(tokenizer, "chat_template", None):
        where += " (replacing the model's own)"
    added: list[str] = []
    if shipped is not None:
        added = _missing_tokens(tokenizer, shipped.special_tokens)
        if added:
            tokenizer.add_special_tokens({"extra_special_tokens": added}, replace_extra_special_tokens=False)
    tokenizer.chat_template = source
    end_of_turn = shipped.end_of_turn_for(tokenizer) if shipped is not None else None
    return ResolvedTemplate(source=where, added_tokens=tuple(added), end_of_turn=end_of_turn)


# Turn closers of common templates (ChatML, Llama 3, Gemma, Phi-3, GPT-style), also the shipped ones.
_KNOWN_CLOSERS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
_REPLY_PROBE = "FTENDOFTURNPROBE"  # an assistant reply that tokenizes to ordinary pieces, found again after rendering


def end_of_turn_ids(tokenizer: Any, template: str | None = None) -> list[int]:
    """eos first, then every token that ends an assistant turn: the one function generation, the
    merged export's generation_config, GGUF and Ollama stop lists read.

    With a chat template (`template`, else the tokenizer's): the known closers its source writes,
    plus the first special token it renders right after an assistant reply (a custom template's
    closer, found without a list). Without one: the known closers the vocabulary has.
    """
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    source = template if template is not None else getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):
        source = source.get("default")
    closers = {t.end_of_turn for t in TEMPLATES.values() if t.end_of_turn != EOS} | set(_KNOWN_CLOSERS)
    vocab = tokenizer.get_vocab()
    ids += [vocab[c] for c in sorted(closers) if c in vocab and (not source or c in str(source))]
    if source:
        ids += _closer_after_reply(tokenizer, str(source))
    return list(dict.fromkeys(ids))


def _closer_after_reply(tokenizer: Any, template: str) -> list[int]:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _REPLY_PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render this probe simply gives no extra token
        return []
    after = text[text.rfind(_REPLY_PROBE) + len(_REPLY_PROBE):] if _REPLY_PROBE in text else ""
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for token_id in tokenizer(after, add_special_tokens=False)["input_ids"]:
        if token_id in special:
            return [token_id]  # the first special token after the reply closes the turn
    return []
