"""Token ids and loss labels for chats, prompt/completion pairs and plain text.

Exact assistant masks for any chat template, including real ones without `{% generation %}`
markers. The template is treated as a black box:

1. Render growing prefixes of the conversation as text; message i's characters are those that
   the first i+1 messages add to the first i. Every prefix must be a string prefix of the full
   rendering, otherwise the template rewrites earlier turns (for example it drops old reasoning)
   and no mask derived from it would be right, so we raise instead.
2. A message's content is located by rendering the conversation again with that content
   replaced by a marker (see `_content_span`). An assistant turn's trained span runs from its
   content to the end of what the template writes for that message, minus trailing whitespace:
   `content<|im_end|>` is trained; the role header before it is not, nor is the newline after
   `<|im_end|>` (the model stops at `<|im_end|>`, so it never emits that newline).
3. The full text is tokenized once, with offsets, exactly as training sees it, and a token is
   trained when any of its characters lies in a trained span. A token that straddles a boundary
   is therefore trained: the model has to produce it, whole, to produce the text.

BOS: the rendered text is tokenized without the tokenizer's special tokens; the tokenizer's bos
is put in front only when the tokenizer adds one to plain text and the template did not already
render it, so a chat never starts with two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import jinja2

LossOn = Literal["assistant", "last_assistant", "all_turns", "all"]
IGNORE_INDEX = -100  # label for tokens with no loss, as torch's cross-entropy expects
ROLES = ("system", "user", "assistant", "tool")  # tool results are read, never trained (but in all_turns/all)

Span = tuple[int, int]  # [start, end) character offsets into the rendered text


@dataclass(frozen=True)
class _Rendered:
    text: str  # the whole conversation, rendered
    spans: list[Span]  # the characters each message added


def _check_messages(messages: list[dict[str, str]]) -> None:
    if not messages:
        raise ValueError("empty conversation: there is nothing to tokenize")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}]: a message must be a dict with role and content, got {message!r}")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{i}]: unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"messages[{i}]: content must be a string, got {type(message.get('content')).__name__}")


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False))
    except jinja2.TemplateError as err:
        raise ValueError(f"the chat template cannot render messages[:{len(messages)}]: {err}") from err


def _render_spans(tokenizer: Any, messages: list[dict[str, str]]) -> _Rendered:
    """Render the conversation and find the characters each message contributes."""
    text = _render(tokenizer, messages)
    spans: list[Span] = []
    start = 0
    for i in range(len(messages)):
        prefix = text if i == len(messages) - 1 else _render(tokenizer, messages[: i + 1])
        if not text.startswith(prefix):
            at = _common_prefix_len(prefix, text)
            raise ValueError(
                f"the chat template renders messages[:{i + 1}] differently from the start of the whole "
                f"conversation (first difference at character {at}: {prefix[at:at + 30]!r} vs "
                f"{text[at:at + 30]!r}), so per-turn loss masks cannot be derived from it. Use a template "
                "whose rendering of a conversation starts with the rendering of its first turns (set "
                "model.chat_template to a shipped template), or train on every token with loss_on: all"
            )
        spans.append((start, len(prefix)))
        start = len(prefix)
    return _Rendered(text, spans)


def _common_prefix_len(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# Private-use characters: no case, not whitespace, so trimming or casing filters leave them be,
# and they do not occur in real text.
_MARKER = "\ue000\ue001\ue002"


def _content_span(tokenizer: Any, messages: list[dict[str, str]], i: int, text: str) -> Span:
    """Where message i's content lies in the rendered text.

    Searching the text for the content can be fooled (a reply "assistant" also appears in the
    role header and in Qwen's default system prompt), so the conversation is rendered again with
    this one content replaced by a marker: the marker lands exactly where the content starts.
    """
    content = messages[i]["content"]
    probe = _render(tokenizer, [*messages[:i], {**messages[i], "content": _MARKER}, *messages[i + 1 :]])
    at = probe.find(_MARKER)
    if at >= 0 and probe[:at] == text[:at] and _MARKER not in text:
        # Templates may trim content (Llama 3, Gemma) or strip one side of it.
        for candidate in (content, content.strip(), content.lstrip(), content.rstrip()):
            if text.startswith(candidate, at):
                return at, at + len(candidate)
    raise ValueError(
        f"messages[{i}] ({messages[i]['role']}): the chat template does not render its content "
        "verbatim or trimmed, so its tokens cannot be located; train with loss_on: all, or use another template"
    )


def _assistant_span(tokenizer: Any, messages: list[dict[str, str]], i: int, rendered: _Rendered) -> Span:
    """The trained characters of assistant message i: its content and the end-of-turn after it."""
    start, end = rendered.spans[i]
    content_start, content_end = _content_span(tokenizer, messages, i, rendered.text)
    if not start <= content_start <= content_end <= end:
        raise ValueError(f"messages[{i}] (assistant): the chat template renders its content outside its own turn")
    return content_start, content_end + len(rendered.text[content_end:end].rstrip())


def _trained_spans(
    tokenizer: Any, messages: list[dict[str, str]], rendered: _Rendered, assistant: set[int], other: set[int]
) -> list[Span]:
    """Trained spans: content + end-of-turn of the `assistant` messages, bare content of the `other` ones."""
    spans = []
    for i in sorted(assistant | other):
        if i in assistant:
            spans.append(_assistant_span(tokenizer, messages, i, rendered))
        else:  # no bounds check: Mistral and Gemma fold the system prompt into the next turn
            spans.append(_content_span(tokenizer, messages, i, rendered.text))
    return spans


def _adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def _needs_bos(tokenizer: Any, text: str) -> bool:
    """The bos rule: a bos token is prepended when the tokenizer adds one by default and the text
    (a rendered template that writes its own bos, say) does not already start with it."""
    starts_with_bos = tokenizer.bos_token is not None and text.startswith(str(tokenizer.bos_token))
    return _adds_bos(tokenizer) and not starts_with_bos


def encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[Span]]:
    """Token ids of `text` and each token's character span, with bos handled as described above.

    This is the one rule for turning rendered text into ids; `prompt_ids` (generation, rollouts,
    previews) uses the same rule, so the model sees at inference exactly what it saw in training.
    A prepended bos has the span (0, 0).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("exact loss masks need character offsets, which only fast (Rust) tokenizers give")
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoding["input_ids"]), [tuple(o) for o in encoding["offset_mapping"]]
    if _needs_bos(tokenizer, text):
        ids, offsets = [tokenizer.bos_token_id] + ids, [(0, 0)] + offsets
    return ids, offsets


def prompt_ids(tokenizer: Any, prompt: str | list[dict[str, str]], *, encoder: bool = False) -> list[int]:
    """The one function that turns a prompt into the ids a model answers: generation, PPO/GRPO
    rollouts, evaluation and previews all call it, so they agree with training.

    With a chat template, a text prompt is the user's message, and the template adds the assistant's
    generation prompt. Without one, the text as it is (a base model continues it, as in training);
    a conversation then has no defined rendering and is refused. `encoder`: the source of an
    encoder-decoder (T5, BART), rendered by `encoder_text` and tokenized with the tokenizer's own
    special tokens (T5's closing `</s>`, BART's `<s> ... </s>`), exactly as seq2seq training does.
    """
    if encoder:
        return list(tokenizer(encoder_text(tokenizer, prompt))["input_ids"])
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        text = str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    elif isinstance(prompt, str):
        text = prompt
    else:
        raise ValueError("the prompt is a conversation, but the tokenizer has no chat template; set "
                         "model.chat_template")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return [tokenizer.bos_token_id] + ids if _needs_bos(tokenizer, text) else ids


def encoder_text(tokenizer: Any, prompt: str | list[dict[str, str]]) -> str:
    """An encoder-decoder's source as text: a text prompt as it is; a conversation (the turns before
    the reply) through the tokenizer's chat template when it has one, else a lone user message as its
    content (so it reads like a prompt_completion prompt) and longer conversations as `role: content`
    lines (T5 and BART ship no chat template)."""
    if isinstance(prompt, str):
        return prompt
    _check_messages(prompt)
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True))
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def source_target(example: dict[str, Any]) -> tuple[str | list[dict[str, str]], str]:
    """(source, target) of a canonical sft example for an encoder-decoder. A conversation's target is
    its last assistant reply and its source every turn before it (earlier replies are context, not
    trained); a prompt/completion pair's target is the completion."""
    if "messages" in example:
        messages = example["messages"]
        replies = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
        if not replies:
            raise ValueError("the conversation has no assistant reply, so there is no target to train on")
        if replies[-1] == 0:
            raise ValueError("the assistant reply is the first message, so the source is empty; put the user turn first")
        return list(messages[:replies[-1]]), messages[replies[-1]]["content"]
    if "completion" in example:  # conversational pairs arrive as messages (formats._prompt_completion)
        return example["prompt"], example["completion"]
    raise ValueError("an encoder-decoder trains on a source and a target (prompt_completion, alpaca, messages); "
                     "this row is plain text")


def tokenize_seq2seq(tokenizer: Any, example: dict[str, Any]) -> dict[str, list[int]]:
    """input_ids: the source as `prompt_ids(encoder=True)` gives it at generation; labels: the target
    tokenized as the model's decoder expects (the tokenizer's target ids with its special tokens: T5's
    `target </s>`, BART's `<s> target </s>`), every one trained. The model derives the decoder inputs
    from the labels (shifted right behind its decoder start token)."""
    source, target = source_target(example)
    if not target.strip():
        raise ValueError("the target is empty, so there is nothing to train on")
    return {"input_ids": prompt_ids(tokenizer, source, encoder=True),
            "labels": list(tokenizer(text_target=target)["input_ids"])}


def _labels(ids: list[int], offsets: list[Span], spans: list[Span], length: int) -> list[int]:
    """ids where a token overlaps a trained span, IGNORE_INDEX elsewhere."""
    trained = [False] * length
    for start, end in spans:
        trained[start:end] = [True] * (end - start)
    return [tok if end > start and any(trained[start:end]) else IGNORE_INDEX for tok, (start, end) in zip(ids, offsets)]


def _eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token, so the end of a text cannot be marked; give it one")
    return int(tokenizer.eos_token_id)


def _chat_example(
    tokenizer: Any, messages: list[dict[str, str]], assistant: set[int], other: set[int], everything: bool = False
) -> dict[str, list[int]]:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; set model.chat_template (see resolve_chat_template)")
    if everything:
        text = _render(tokenizer, messages)
        ids, _ = encode_with_offsets(tokenizer, text)
        return {"input_ids": ids, "labels": list(ids)}
    rendered = _render_spans(tokenizer, messages)
    ids, offsets = encode_with_offsets(tokenizer, rendered.text)
    spans = _trained_spans(tokenizer, messages, rendered, assistant, other)
    return {"input_ids": ids, "labels": _labels(ids, offsets, spans, len(rendered.text))}


def tokenize_conversation(
    tokenizer: Any, messages: list[dict[str, str]], loss_on: LossOn = "assistant"
) -> dict[str, list[int]]:
    """Tokenize a chat with the tokenizer's chat template; labels are IGNORE_INDEX where there is no loss.

    loss_on: `assistant` trains every assistant turn (content + end-of-turn); `last_assistant` only
    the final one; `all_turns` every assistant turn as in `assistant`, plus the content of system
    and user turns, never the template's scaffolding (headers, separators); `all` every token.
    """
    _check_messages(messages)
    assistant = {i for i, m in enumerate(messages) if m["role"] == "assistant"}
    if loss_on in ("assistant", "last_assistant") and not assistant:
        raise ValueError(f"loss_on: {loss_on} needs an assistant turn, and this conversation has none")
    if loss_on == "assistant":
        return _chat_example(tokenizer, messages, assistant, set())
    if loss_on == "last_assistant":
        return _chat_example(tokenizer, messages, {max(assistant)}, set())
    if loss_on == "all_turns":
        return _chat_example(tokenizer, messages, assistant, set(range(len(messages))) - assistant)
    if loss_on == "all":
        return _chat_example(tokenizer, messages, set(), set(), everything=True)
    raise ValueError(f"unknown loss_on {loss_on!r}; expected assistant, last_assistant, all_turns or all")


def tokenize_prompt_completion(
    tokenizer: Any,
    prompt: str | list[dict[str, str]],
    completion: str | list[dict[str, str]],
    completion_only: bool = True,
) -> dict[str, list[int]]:
    """Tokenize a prompt and its completion; with `completion_only`, only the completion is trained.

    Conversational pairs go through the chat template and the completion's assistant turns are
    trained. Plain strings are tokenized as one text (so the boundary tokenizes as in inference)
    with eos appended; the completion's tokens and the eos are trained.
    """
    if isinstance(prompt, str) and isinstance(completion, str):
        return _plain_prompt_completion(tokenizer, prompt, completion, completion_only)
    if isinstance(prompt, str) or isinstance(completion, str):
        raise ValueError("prompt and completion must both be text or both be lists of messages, not one of each")
    messages = list(prompt) + list(completion)
    _check_messages(messages)
    if not completion_only:
        return _chat_example(tokenizer, messages, set(), set(), everything=True)
    trained = {i for i in range(len(prompt), len(messages)) if messages[i]["role"] == "assistant"}
    if not trained:
        raise ValueError("the completion has no assistant turn, so there is nothing to train on")
    return _chat_example(tokenizer, messages, trained, set())


def _plain_prompt_completion(
    tokenizer: Any, prompt: str, completion: str, completion_only: bool
) -> dict[str, list[int]]:
    text = prompt + completion
    ids, offsets = encode_with_offsets(tokenizer, text)
    if completion_only:
        labels = _labels(ids, offsets, [(len(prompt), len(text))], len(text))
    else:
        labels = list(ids)
    eos = _eos_id(tokenizer)
    return {"input_ids": ids + [eos], "labels": labels + [eos]}


def tokenize_text(tokenizer: Any, text: str) -> dict[str, list[int]]:
    """Tokenize a plain document: bos if the tokenizer adds one, eos appended, every token trained."""
    ids, _ = encode_with_offsets(tokenizer, text)
    ids = ids + [_eos_id(tokenizer)]
    return {"input_ids": ids, "labels": list(ids)}
