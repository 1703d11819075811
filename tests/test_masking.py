"""Loss masks: the trained tokens, decoded, are exactly the text that should be learned."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
from transformers import PreTrainedTokenizerFast

from data_templates.chat_templates import TEMPLATES, get_template, resolve_chat_template
from data_templates.masking import (
    prompt_ids,
    IGNORE_INDEX,
    LossOn,
    encode_with_offsets,
    tokenize_conversation,
    tokenize_prompt_completion,
    tokenize_text,
)
from tests._tokenizers import CONV, LLAMA3_TEMPLATE, QWEN25_TEMPLATE, make_tokenizer, trained_runs

SYS, Q1, A1, Q2, A2 = (m["content"] for m in CONV)
Messages = list[dict[str, str]]


def _shipped(name: str, adds_bos: bool = False) -> PreTrainedTokenizerFast:
    tokenizer = make_tokenizer(adds_bos=adds_bos)
    resolve_chat_template(tokenizer, name)
    return tokenizer


def _qwen() -> PreTrainedTokenizerFast:
    return make_tokenizer(bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_template=QWEN25_TEMPLATE)


def _llama3() -> PreTrainedTokenizerFast:
    return make_tokenizer(bos="<|begin_of_text|>", eos="<|eot_id|>", adds_bos=True, chat_template=LLAMA3_TEMPLATE)


def _runs(tokenizer: PreTrainedTokenizerFast, messages: Messages, loss_on: LossOn = "assistant") -> list[str]:
    return trained_runs(tokenizer, tokenize_conversation(tokenizer, messages, loss_on))


# ---- every shipped template, every loss_on mode -------------------------------------------------

def _eot(name: str) -> str:
    return get_template(name).end_of_turn_for(make_tokenizer())


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_assistant_trains_each_reply_and_its_end_of_turn(name: str) -> None:
    assert _runs(_shipped(name), CONV, "assistant") == [A1 + _eot(name), A2 + _eot(name)]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_last_assistant_trains_only_the_final_reply(name: str) -> None:
    assert _runs(_shipped(name), CONV, "last_assistant") == [A2 + _eot(name)]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_all_trains_every_token(name: str) -> None:
    tokenizer = _shipped(name)
    example = tokenize_conversation(tokenizer, CONV, "all")
    assert example["labels"] == example["input_ids"]
    assert tokenizer.decode(example["input_ids"], skip_special_tokens=False) == tokenizer.apply_chat_template(
        CONV, tokenize=False
    )


# Content of every turn, never the scaffolding. Two cases show the token rule at work: Mistral's
# second question is tokenized as " And" after "[INST]", so that token (and its space) is
# trained; in `completion` the second question directly follows "</s>", so the runs join.
ALL_TURNS = {name: [SYS, Q1, A1 + _eot(name), Q2, A2 + _eot(name)] for name in TEMPLATES}
ALL_TURNS["mistral"] = [SYS, Q1, A1 + "</s>", " " + Q2, A2 + "</s>"]
ALL_TURNS["completion"] = [SYS, Q1, A1 + "</s>" + Q2, A2 + "</s>"]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_all_turns_trains_contents_but_not_scaffolding(name: str) -> None:
    assert _runs(_shipped(name), CONV, "all_turns") == ALL_TURNS[name]


def test_chatml_mask_token_by_token() -> None:
    tokenizer = _shipped("chatml")
    example = tokenize_conversation(tokenizer, CONV[1:3])
    header = f"<|im_start|>user\n{Q1}<|im_end|>\n<|im_start|>assistant\n"
    pieces = [tokenizer.encode(text, add_special_tokens=False) for text in (header, A1 + "<|im_end|>", "\n")]
    assert example["input_ids"] == pieces[0] + pieces[1] + pieces[2]
    # User turn and both headers untrained; reply and <|im_end|> trained; the final newline untrained.
    assert example["labels"] == [IGNORE_INDEX] * len(pieces[0]) + pieces[1] + [IGNORE_INDEX] * len(pieces[2])


# ---- real models' own templates ---------------------------------------------------------------

def test_qwen25_template_masks_replies_not_default_system_prompt() -> None:
    tokenizer = _qwen()
    assert _runs(tokenizer, CONV) == [A1 + "<|im_end|>", A2 + "<|im_end|>"]
    no_system = CONV[1:]
    assert "You are Qwen" in tokenizer.apply_chat_template(no_system, tokenize=False)
    assert _runs(tokenizer, no_system) == [A1 + "<|im_end|>", A2 + "<|im_end|>"]
    # The default system prompt is template text, not a turn's content.
    assert _runs(tokenizer, no_system, "all_turns") == [Q1, A1 + "<|im_end|>", Q2, A2 + "<|im_end|>"]
    assert _runs(tokenizer, no_system, "last_assistant") == [A2 + "<|im_end|>"]


def test_llama3_template_masks_trimmed_replies_with_one_bos() -> None:
    tokenizer = _llama3()
    messages = [*CONV[:4], {"role": "assistant", "content": "  Rome.\n"}]  # Llama 3 trims content
    example = tokenize_conversation(tokenizer, messages)
    assert trained_runs(tokenizer, example) == [A1 + "<|eot_id|>", "Rome.<|eot_id|>"]
    ids = example["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert _runs(tokenizer, messages, "all_turns") == [SYS, Q1, A1 + "<|eot_id|>", Q2, "Rome.<|eot_id|>"]


def test_mask_agrees_with_generation_markers() -> None:
    # A template with TRL-style {% generation %} markers around reply + <|im_end|> gives an
    # independent mask from transformers; the diff-based mask must equal it token for token.
    marked = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
        "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}"
        "{% else %}{{ m['content'] + '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    tokenizer = make_tokenizer(chat_template=marked)
    reference = tokenizer.apply_chat_template(CONV, return_dict=True, return_assistant_tokens_mask=True)
    example = tokenize_conversation(tokenizer, CONV)
    assert example["input_ids"] == reference["input_ids"]
    assert [int(label != IGNORE_INDEX) for label in example["labels"]] == reference["assistant_masks"]


# ---- diffing must not be fooled ---------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: _shipped("chatml"), _qwen], ids=["chatml", "qwen25"])
def test_repeated_text_in_user_and_assistant_turns(make: Callable[[], PreTrainedTokenizerFast]) -> None:
    tokenizer = make()
    messages = [
        {"role": "user", "content": "assistant"},
        {"role": "assistant", "content": "assistant"},  # also the role name in its own header
        {"role": "user", "content": "Paris."},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "user"},
        {"role": "assistant", "content": "user"},
    ]
    assert _runs(tokenizer, messages) == ["assistant<|im_end|>", "Paris.<|im_end|>", "user<|im_end|>"]
    assert _runs(tokenizer, messages, "all_turns") == [
        "assistant", "assistant<|im_end|>", "Paris.", "Paris.<|im_end|>", "user", "user<|im_end|>"
    ]


def test_reply_that_is_part_of_the_end_of_turn_token() -> None:
    tokenizer = _shipped("mistral")  # replies end with "</s>", which contains "s"
    messages = [{"role": "user", "content": "s"}, {"role": "assistant", "content": "s"}]
    assert _runs(tokenizer, messages) == ["s</s>"]


def test_empty_reply_trains_only_the_end_of_turn() -> None:
    tokenizer = _shipped("chatml")
    messages = [{"role": "user", "content": Q1}, {"role": "assistant", "content": ""}]
    assert _runs(tokenizer, messages) == ["<|im_end|>"]


# ---- templates that cannot give exact masks -----------------------------------------------------

# Microsoft's Phi-3 template appends eos after the last turn, so a conversation's first turns
# render differently inside a longer one ("...<|end|>\n</s>" vs "...<|end|>\n<|user|>...").
PHI3_WITH_TRAILER = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)


def test_template_that_rewrites_earlier_turns_is_refused() -> None:
    tokenizer = make_tokenizer(chat_template=PHI3_WITH_TRAILER)
    with pytest.raises(ValueError, match=r"renders messages\[:1\] differently from the start of the whole"):
        tokenize_conversation(tokenizer, CONV)
    # Training on every token needs no per-turn spans, so it still works.
    example = tokenize_conversation(tokenizer, CONV, "all")
    assert tokenizer.decode(example["input_ids"], skip_special_tokens=False).endswith("Rome.<|end|>\n</s>")


def test_template_that_changes_reply_text_is_refused() -> None:
    shouting = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] | upper + '\\n' }}{% endfor %}"
    tokenizer = make_tokenizer(chat_template=shouting)
    with pytest.raises(ValueError, match=r"messages\[2\] \(assistant\): the chat template does not render"):
        tokenize_conversation(tokenizer, CONV)


# ---- bad input --------------------------------------------------------------------------------

def test_empty_conversation() -> None:
    with pytest.raises(ValueError, match="empty conversation"):
        tokenize_conversation(_shipped("chatml"), [])


@pytest.mark.parametrize("loss_on", ["assistant", "last_assistant"])
def test_conversation_without_assistant_turn(loss_on: LossOn) -> None:
    with pytest.raises(ValueError, match=f"loss_on: {loss_on} needs an assistant turn"):
        tokenize_conversation(_shipped("chatml"), CONV[:2], loss_on)


def test_all_turns_without_assistant_turn_trains_the_user_text() -> None:
    assert _runs(_shipped("chatml"), CONV[:2], "all_turns") == [SYS, Q1]


def test_tool_results_are_read_not_trained() -> None:
    tool = [{"role": "user", "content": Q1}, {"role": "assistant", "content": "Let me check."},
            {"role": "tool", "content": "42"}, {"role": "assistant", "content": A1}]
    assert _runs(_shipped("chatml"), tool, "assistant") == ["Let me check.<|im_end|>", A1 + "<|im_end|>"]
    assert _runs(_shipped("chatml"), tool, "all_turns") == [Q1, "Let me check.<|im_end|>", "42", A1 + "<|im_end|>"]


def test_unknown_role_and_bad_content() -> None:
    tokenizer = _shipped("chatml")
    with pytest.raises(ValueError, match=r"messages\[1\]: unknown role 'bot'; expected one of system, user"):
        tokenize_conversation(tokenizer, [CONV[0], {"role": "bot", "content": "hi"}])
    with pytest.raises(ValueError, match=r"messages\[0\]: content must be a string, got list"):
        tokenize_conversation(tokenizer, [{"role": "user", "content": [{"type": "text"}]}])  # type: ignore[list-item]


def test_unknown_loss_on() -> None:
    with pytest.raises(ValueError, match="unknown loss_on 'prompt'"):
        tokenize_conversation(_shipped("chatml"), CONV, "prompt")  # type: ignore[arg-type]


def test_tokenizer_without_chat_template() -> None:
    with pytest.raises(ValueError, match=r"no chat template; set model\.chat_template"):
        tokenize_conversation(make_tokenizer(), CONV)


def test_tokenizer_without_offsets_is_refused() -> None:
    with pytest.raises(ValueError, match="only fast"):
        encode_with_offsets(SimpleNamespace(is_fast=False), "hi")


# ---- BOS --------------------------------------------------------------------------------------

def test_bos_added_once_when_template_has_none() -> None:
    tokenizer = _shipped("chatml", adds_bos=True)
    example = tokenize_conversation(tokenizer, CONV)
    assert example["input_ids"][0] == tokenizer.bos_token_id
    assert example["input_ids"].count(tokenizer.bos_token_id) == 1
    assert example["labels"][0] == IGNORE_INDEX
    assert trained_runs(tokenizer, example) == [A1 + "<|im_end|>", A2 + "<|im_end|>"]


@pytest.mark.parametrize("name", ["mistral", "gemma", "llama3"])
def test_bos_not_doubled_when_template_renders_it(name: str) -> None:
    tokenizer = _shipped(name, adds_bos=True)
    ids = tokenize_conversation(tokenizer, CONV)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id


def test_no_bos_for_tokenizer_that_adds_none() -> None:
    tokenizer = _shipped("chatml")
    assert tokenizer.bos_token_id not in tokenize_conversation(tokenizer, CONV)["input_ids"]


# ---- prompt/completion and plain text ---------------------------------------------------------

def test_conversational_prompt_completion_trains_only_the_completion() -> None:
    tokenizer = _shipped("chatml")
    example = tokenize_prompt_completion(tokenizer, CONV[:4], CONV[4:])
    assert trained_runs(tokenizer, example) == [A2 + "<|im_end|>"]
    assert example["input_ids"] == tokenize_conversation(tokenizer, CONV)["input_ids"]
    everything = tokenize_prompt_completion(tokenizer, CONV[:4], CONV[4:], completion_only=False)
    assert everything["labels"] == everything["input_ids"]


def test_conversational_completion_needs_an_assistant_turn() -> None:
    with pytest.raises(ValueError, match="the completion has no assistant turn"):
        tokenize_prompt_completion(_shipped("chatml"), CONV[:1], CONV[1:2])


def test_prompt_and_completion_must_be_the_same_kind() -> None:
    with pytest.raises(ValueError, match="both be text or both be lists of messages"):
        tokenize_prompt_completion(_shipped("chatml"), "What is 2+2?", CONV[2:3])


def test_plain_prompt_completion_trains_completion_and_eos() -> None:
    tokenizer = make_tokenizer(adds_bos=True)
    example = tokenize_prompt_completion(tokenizer, "What is 2+2?", " 4")
    ids = example["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<s>What is 2+2? 4</s>"
    assert trained_runs(tokenizer, example) == [" 4</s>"]
    everything = tokenize_prompt_completion(tokenizer, "What is 2+2?", " 4", completion_only=False)
    assert everything["labels"] == everything["input_ids"] == ids


def test_plain_prompt_completion_tokenizes_the_joined_text() -> None:
    # "Hel" + "lo there" is tokenized as one text, so "Hello" is one token as at inference; the
    # token straddles the boundary and the model must produce it, so it is trained.
    tokenizer = make_tokenizer()
    example = tokenize_prompt_completion(tokenizer, "Hel", "lo there")
    assert example["input_ids"][:-1] == tokenizer.encode("Hello there", add_special_tokens=False)
    assert trained_runs(tokenizer, example) == ["Hello there</s>"]


def test_tokenize_text_adds_bos_if_tokenizer_does_and_eos_always() -> None:
    with_bos = make_tokenizer(adds_bos=True)
    example = tokenize_text(with_bos, "Hello there")
    assert with_bos.decode(example["input_ids"], skip_special_tokens=False) == "<s>Hello there</s>"
    assert example["labels"] == example["input_ids"]
    without_bos = make_tokenizer()
    assert without_bos.decode(tokenize_text(without_bos, "Hello there")["input_ids"]) == "Hello there</s>"


def test_tokenize_text_needs_eos() -> None:
    with pytest.raises(ValueError, match="no eos_token"):
        tokenize_text(make_tokenizer(eos=None), "Hello")


@pytest.mark.parametrize("adds_bos", [True, False])
@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_prompt_ids_are_the_training_ids_up_to_the_answer(adds_bos: bool, template: str) -> None:
    """Generation, rollouts and previews (prompt_ids) see exactly the ids training saw before the
    assistant's answer: the same bos rule whether the template writes bos itself or the tokenizer adds it."""
    tokenizer = make_tokenizer(adds_bos=adds_bos)
    resolve_chat_template(tokenizer, template)
    messages = [{"role": "user", "content": "What is a tokenizer?"}, {"role": "assistant", "content": "A splitter."}]
    trained = tokenize_conversation(tokenizer, messages)
    first_label = next(i for i, label in enumerate(trained["labels"]) if label != -100)
    prompt = prompt_ids(tokenizer, messages[:1])
    assert prompt == trained["input_ids"][:first_label]
    assert prompt.count(tokenizer.bos_token_id) == (1 if adds_bos or template == "llama3" else 0)
    assert prompt_ids(tokenizer, "What is a tokenizer?") == prompt  # a text prompt is the user's message


def test_prompt_ids_without_a_template_are_the_plain_text_with_the_tokenizers_bos() -> None:
    tokenizer = make_tokenizer(adds_bos=True)
    assert prompt_ids(tokenizer, "Once upon") == tokenizer("Once upon")["input_ids"]
    with pytest.raises(ValueError, match="no chat template"):
        prompt_ids(tokenizer, [{"role": "user", "content": "hi"}])
