"""Dataset formats, each declared once and converted to one canonical example form.

A format names the fields it reads (users map their own column names onto them with
`columns:`) and converts one row into the canonical form an objective consumes:

- sft:                 {"messages": [...]}  or  {"prompt": str, "completion": str}
- text:                {"text": str}
- preference:          {"prompt": ..., "chosen": ..., "rejected": ...}
- unpaired_preference: {"prompt": ..., "completion": ..., "label": bool}
- prompt_only:         {"prompt": ..., plus any extra columns, e.g. a reference answer}
- classification:      {"text": str, "text_pair": str | None, "label": str | int | float | list}
- vision_sft:          {"messages": [...]} where a user turn's content may be a list of parts,
                       {"type": "text", "text": str} and {"type": "image", "image": path or URL}

A row that does not fit raises `RowError`; the caller adds file and row number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


class RowError(ValueError):
    """A row does not fit its format; the message says which field and why."""


@dataclass(frozen=True)
class Format:
    name: str
    form: str  # the canonical form it produces (see module docstring)
    fields: tuple[str, ...]  # required fields
    optional: tuple[str, ...]
    convert: Callable[[dict[str, Any]], dict[str, Any]]
    description: str


FORMATS: dict[str, Format] = {}


def register_format(name: str, *, form: str, fields: tuple[str, ...], optional: tuple[str, ...] = (),
                    description: str) -> Callable[[Callable[[dict[str, Any]], dict[str, Any]]], Any]:
    def register(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        FORMATS[name] = Format(name, form, fields, optional, fn, description)
        return fn

    return register


def formats_for(data_form: str) -> list[str]:
    """Names of the formats an objective with `data_form` can train on."""
    from data_templates.forms import data_form as form_of

    forms = form_of(data_form).accepts
    return [name for name, fmt in FORMATS.items() if fmt.form in forms]


def require_str(row: dict[str, Any], field: str, *, allow_empty: bool = False) -> str:
    value = row.get(field)
    if value is None:
        raise RowError(f"missing field {field!r}")
    if not isinstance(value, str):
        raise RowError(f"field {field!r} must be text, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RowError(f"field {field!r} is empty")
    return value


def check_messages(value: Any, field: str, *, need_assistant: bool = True) -> list[dict[str, str]]:
    """A list of {role, content} messages with known roles, normalised to plain dicts."""
    if not isinstance(value, list):
        raise RowError(f"field {field!r} must be a list of messages, got {type(value).__name__}")
    if not value:
        raise RowError(f"field {field!r} is an empty conversation")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise RowError(f"{field}[{i}] must have 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise RowError(f"{field}[{i}] has unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if isinstance(content, list) and any(_is_image_part(part) for part in content):
            raise RowError(f"{field}[{i}].content has an image part, but this format and objective are text-only; "
                           f"train images with format: vision_messages, objective.kind: vlm_sft and a "
                           f"vision-language model")
        if not isinstance(content, str):
            raise RowError(f"{field}[{i}].content must be text, got {type(content).__name__}")
        messages.append({"role": role, "content": content})
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise RowError(f"field {field!r} has no assistant turn")
    return messages


# The keys an image content part may name its file or URL with (the standard content-part format).
IMAGE_KEYS = ("image", "path", "url")


def _is_image_part(part: Any) -> bool:
    return isinstance(part, dict) and (part.get("type") == "image" or any(key in part for key in IMAGE_KEYS))


def _content_parts(content: Any, where: str, role: str) -> str | list[dict[str, str]]:
    """A message's content as text, or as a list of text and image parts normalised to
    {"type": "text", "text": ...} / {"type": "image", "image": path-or-URL}."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise RowError(f"{where}.content must be text or a non-empty list of content parts")
    parts: list[dict[str, str]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if _is_image_part(part):
            if role != "user":
                raise RowError(f"{at}: an image in a turn of role {role}; images go in user turns")
            ref = next((part[key] for key in IMAGE_KEYS if key in part), None)
            if not isinstance(ref, str) or not ref.strip():
                raise RowError(f"{at}: an image part needs a file path or URL in one of {', '.join(IMAGE_KEYS)}")
            parts.append({"type": "image", "image": ref})
        elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        else:
            raise RowError(f"{at} must be {{type: text, text: ...}} or {{type: image, image: PATH or URL}}, "
                           f"got {part!r}")
    return parts


@register_format("text", form="text", fields=("text",), description="Raw text, for continued pretraining.")
def _text(row: dict[str, Any]) -> dict[str, Any]:
    return {"text": require_str(row, "text")}


@register_format("messages", form="sft", fields=("messages",),
                 description="OpenAI-style role/content messages, with system and multi-turn.")
def _messages(row: dict[str, Any]) -> dict[str, Any]:
    return {"messages": check_messages(row.get("messages"), "messages")}


@register_format("prompt_completion", form="sft", fields=("prompt", "completion"),
                 description="A prompt and its completion, as text or as message lists.")
def _prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, list) or isinstance(completion, list):
        return {"messages": check_messages(prompt, "prompt", need_assistant=False)
                + check_messages(completion, "completion")}
    return {"prompt": require_str(row, "prompt", allow_empty=True), "completion": require_str(row, "completion")}


@register_format("alpaca", form="sft", fields=("instruction", "output"), optional=("input", "system", "history"),
                 description="instruction / input / output, with optional system and history.")
def _alpaca(row: dict[str, Any]) -> dict[str, Any]:
    instruction = require_str(row, "instruction")
    output = require_str(row, "output")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise RowError(f"field 'input' must be text, got {type(extra).__name__}")
    messages: list[dict[str, str]] = []
    if row.get("system"):
        messages.append({"role": "system", "content": require_str(row, "system")})
    for i, turn in enumerate(row.get("history") or []):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise RowError(f"history[{i}] must be a [user, assistant] pair of texts")
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return {"messages": messages + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]}


_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant", "model": "assistant", "tool": "tool", "function": "tool",
                   "observation": "tool"}


@register_format("sharegpt", form="sft", fields=("conversations",), optional=("system",),
                 description="ShareGPT: conversations of {from, value} (human/gpt/system roles).")
def _sharegpt(row: dict[str, Any]) -> dict[str, Any]:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RowError("field 'conversations' must be a non-empty list of {from, value} turns")
    messages = [{"role": "system", "content": require_str(row, "system")}] if row.get("system") else []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RowError(f"conversations[{i}] must have 'from' and 'value'")
        role = _SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise RowError(f"conversations[{i}] has unknown role {turn['from']!r} "
                           f"(expected one of {', '.join(sorted(_SHAREGPT_ROLES))})")
        messages.append({"role": role, "content": turn["value"]})
    return {"messages": check_messages(messages, "conversations")}


def _prompt(value: Any) -> str | list[dict[str, str]]:
    """A prompt as text, or as messages without an assistant answer at the end."""
    if isinstance(value, list):
        return check_messages(value, "prompt", need_assistant=False)
    if not isinstance(value, str) or not value.strip():
        raise RowError("field 'prompt' must be non-empty text or a list of messages")
    return value


def _answer(value: Any, field: str, conversational: bool) -> str | list[dict[str, str]]:
    """A response as text, or as a list of assistant messages (matching the prompt's kind)."""
    if isinstance(value, list):
        messages = check_messages(value, field)
        if not conversational:
            raise RowError(f"field {field!r} is a message list but 'prompt' is text; use the same kind for both")
        return messages
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"field {field!r} must be non-empty text or a list of messages")
    # Text answers to a conversational prompt become one assistant message.
    return [{"role": "assistant", "content": value}] if conversational else value


@register_format("preference", form="preference", fields=("prompt", "chosen", "rejected"),
                 description="prompt + chosen + rejected, as text or message lists (DPO, reward).")
def _preference(row: dict[str, Any]) -> dict[str, Any]:
    prompt = _prompt(row.get("prompt"))
    chat = isinstance(prompt, list)
    chosen, rejected = _answer(row.get("chosen"), "chosen", chat), _answer(row.get("rejected"), "rejected", chat)
    if chosen == rejected:
        # The pair's loss gradient is zero (DPO) or pushes two equal scores apart (reward): noise.
        raise RowError("'chosen' and 'rejected' are identical, so the pair prefers nothing")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


_TRUE = {True, 1, "1", "true", "True", "yes"}
_FALSE = {False, 0, "0", "false", "False", "no"}


@register_format("unpaired_preference", form="unpaired_preference", fields=("prompt", "completion", "label"),
                 description="prompt + completion + boolean label (desirable or not), for KTO.")
def _unpaired(row: dict[str, Any]) -> dict[str, Any]:
    prompt = _prompt(row.get("prompt"))
    label = row.get("label")
    if label not in _TRUE and label not in _FALSE:
        raise RowError(f"field 'label' must be true or false, got {label!r}")
    return {"prompt": prompt, "completion": _answer(row.get("completion"), "completion", isinstance(prompt, list)),
            "label": label in _TRUE}


@register_format("prompt_only", form="prompt_only", fields=("prompt",), optional=("reference",),
                 description="Prompts alone (PPO, GRPO), optionally with a reference answer for rewards.")
def _prompt_only(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt": _prompt(row.get("prompt"))}
    if row.get("reference") is not None:
        out["reference"] = str(row["reference"])
    return out


@register_format("classification", form="classification", fields=("text", "label"), optional=("text_pair",),
                 description="text (or a text pair) + label: a class name or id, a list of them (multi-label), "
                             "or a number (regression).")
def _classification(row: dict[str, Any]) -> dict[str, Any]:
    label = row.get("label")
    if label is None or label == "" or label == []:
        raise RowError("missing field 'label'")
    labels = label if isinstance(label, list) else [label]
    if not all(isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in labels):
        raise RowError(f"field 'label' must be a class name, a class id, a number or a list of class names, "
                       f"got {label!r}")
    pair = row.get("text_pair")
    return {"text": require_str(row, "text"), "text_pair": None if pair is None else require_str(row, "text_pair"),
            "label": label}


# Registered last: a row with a `messages` field fits `messages` and this alike, and guessing a format
# from a row's fields (`ft eval --data`) takes the first that fits, the text one.
@register_format("vision_messages", form="vision_sft", fields=("messages",),
                 description="role/content messages whose user turns hold text and image parts "
                             "({type: image, image: PATH or URL}), for vision-language models (vlm_sft).")
def _vision_messages(row: dict[str, Any]) -> dict[str, Any]:
    value = row.get("messages")
    if not isinstance(value, list) or not value:
        raise RowError("field 'messages' must be a non-empty list of messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise RowError(f"messages[{i}] must have 'role' and 'content'")
        if message["role"] not in ROLES:
            raise RowError(f"messages[{i}] has unknown role {message['role']!r} (expected one of {', '.join(ROLES)})")
        messages.append({"role": message["role"],
                         "content": _content_parts(message["content"], f"messages[{i}]", message["role"])})
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("field 'messages' has no assistant turn")
    return {"messages": messages}
