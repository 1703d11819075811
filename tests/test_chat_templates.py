"""Shipped chat templates render exact golden strings; resolve_chat_template picks and checks one."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest

from data_templates.chat_templates import EOS, TEMPLATES, get_template, resolve_chat_template
from tests._tokenizers import CONV, TEMPLATE_TOKENS, make_tokenizer

SYS, Q1, A1, Q2, A2 = (m["content"] for m in CONV)

# The full CONV rendering of each template, written out by hand from each family's format.
GOLDEN: dict[str, str] = {
    "chatml": (
        f"<|im_start|>system\n{SYS}<|im_end|>\n"
        f"<|im_start|>user\n{Q1}<|im_end|>\n"
        f"<|im_start|>assistant\n{A1}<|im_end|>\n"
        f"<|im_start|>user\n{Q2}<|im_end|>\n"
        f"<|im_start|>assistant\n{A2}<|im_end|>\n"
    ),
    "llama3": (
        f"<s><|start_header_id|>system<|end_header_id|>\n\n{SYS}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{Q1}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{A1}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{Q2}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{A2}<|eot_id|>"
    ),
    "mistral": f"<s>[INST] {SYS}\n\n{Q1} [/INST]{A1}</s>[INST] {Q2} [/INST]{A2}</s>",
    "gemma": (
        f"<s><start_of_turn>user\n{SYS}\n\n{Q1}<end_of_turn>\n"
        f"<start_of_turn>model\n{A1}<end_of_turn>\n"
        f"<start_of_turn>user\n{Q2}<end_of_turn>\n"
        f"<start_of_turn>model\n{A2}<end_of_turn>\n"
    ),
    "phi3": (
        f"<|system|>\n{SYS}<|end|>\n"
        f"<|user|>\n{Q1}<|end|>\n"
        f"<|assistant|>\n{A1}<|end|>\n"
        f"<|user|>\n{Q2}<|end|>\n"
        f"<|assistant|>\n{A2}<|end|>\n"
    ),
    "alpaca": (
        f"{SYS}\n\n"
        f"### Instruction:\n{Q1}\n\n### Response:\n{A1}</s>\n\n"
        f"### Instruction:\n{Q2}\n\n### Response:\n{A2}</s>"
    ),
    "completion": f"{SYS}\n{Q1}\n{A1}</s>{Q2}\n{A2}</s>",
}

# The rendering of CONV[:4] (ending with the user's second question) with add_generation_prompt.
GENERATION_PROMPT: dict[str, str] = {
    "chatml": "<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "",  # [/INST] already hands over to the model
    "gemma": "<start_of_turn>model\n",
    "phi3": "<|assistant|>\n",
    "alpaca": "### Response:\n",
    "completion": "",
}


def _prompt_golden(name: str) -> str:
    """GOLDEN up to the end of the second user turn, followed by the generation prompt."""
    full = GOLDEN[name]
    second_user_end = full.index(Q2) + len(Q2)
    if name == "mistral":
        second_user_end += len(" [/INST]")
    tail = {"chatml": "<|im_end|>\n", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>\n", "phi3": "<|end|>\n",
            "alpaca": "\n\n", "completion": "\n", "mistral": ""}[name]
    return full[:second_user_end] + tail + GENERATION_PROMPT[name]


def test_every_required_template_is_shipped() -> None:
    assert set(GOLDEN) <= set(TEMPLATES)
    assert set(TEMPLATES) == set(GOLDEN), "a new shipped template needs a golden string here"


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_template_renders_golden_conversation(name: str) -> None:
    tokenizer = make_tokenizer()
    rendered = tokenizer.apply_chat_template(CONV, chat_template=get_template(name).source, tokenize=False)
    assert rendered == GOLDEN[name]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_template_renders_generation_prompt(name: str) -> None:
    tokenizer = make_tokenizer()
    source = get_template(name).source
    rendered = tokenizer.apply_chat_template(CONV[:4], chat_template=source, tokenize=False, add_generation_prompt=True)
    assert rendered == _prompt_golden(name)


def test_generation_prompt_goldens_spelled_out() -> None:
    # _prompt_golden derives the strings; pin two of them literally so a slip there cannot hide.
    assert _prompt_golden("chatml") == (
        f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\n{Q1}<|im_end|>\n"
        f"<|im_start|>assistant\n{A1}<|im_end|>\n<|im_start|>user\n{Q2}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert _prompt_golden("mistral") == f"<s>[INST] {SYS}\n\n{Q1} [/INST]{A1}</s>[INST] {Q2} [/INST]"


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_template_without_system_prompt(name: str) -> None:
    tokenizer = make_tokenizer()
    rendered = tokenizer.apply_chat_template(CONV[1:3], chat_template=get_template(name).source, tokenize=False)
    assert SYS not in rendered
    assert Q1 in rendered and A1 in rendered
    if name == "alpaca":  # without a system message, Alpaca's own preamble opens the prompt
        assert rendered.startswith("Below is an instruction that describes a task.")


# Meta's Llama 3 template is shipped verbatim and renders any role (Llama uses `ipython`);
# tokenize_conversation checks roles for every template.
@pytest.mark.parametrize("name", sorted(set(GOLDEN) - {"llama3"}))
def test_template_rejects_unknown_role(name: str) -> None:
    tokenizer = make_tokenizer()
    conv = [{"role": "user", "content": "hi"}, {"role": "narrator", "content": "meanwhile"}]
    with pytest.raises(jinja2.TemplateError, match="Unknown role: narrator"):
        tokenizer.apply_chat_template(conv, chat_template=get_template(name).source, tokenize=False)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_declared_tokens_are_the_ones_the_template_writes(name: str) -> None:
    template = get_template(name)
    for token in template.special_tokens:
        assert token in template.source
    assert template.end_of_turn == EOS or template.end_of_turn in template.special_tokens
    # Every assistant reply in the golden rendering is closed by the end-of-turn token.
    end = template.end_of_turn_for(make_tokenizer())
    assert f"{A1}{end}" in GOLDEN[name] and f"{A2}{end}" in GOLDEN[name]


def test_get_template_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown chat template 'vicuna'.*alpaca, chatml, completion"):
        get_template("vicuna")


def test_resolve_keeps_models_own_template() -> None:
    own = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer = make_tokenizer(chat_template=own)
    resolved = resolve_chat_template(tokenizer, None)
    assert resolved.source == "the model's own"
    assert resolved.added_tokens == ()
    assert tokenizer.chat_template == own


def test_resolve_without_any_template_says_what_to_set() -> None:
    tokenizer = make_tokenizer()
    with pytest.raises(ValueError, match=r"no chat template; set model\.chat_template to one of alpaca, chatml"):
        resolve_chat_template(tokenizer, None)


def test_resolve_shipped_template_adds_missing_control_tokens() -> None:
    tokenizer = make_tokenizer(specials=())
    before = len(tokenizer)
    resolved = resolve_chat_template(tokenizer, "chatml")
    assert resolved.source == "shipped 'chatml'"
    assert resolved.added_tokens == ("<|im_start|>", "<|im_end|>")
    assert resolved.end_of_turn == "<|im_end|>"
    assert len(tokenizer) == before + 2
    assert tokenizer.chat_template == get_template("chatml").source
    # The control tokens now encode as single tokens, and are skipped when decoding output.
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_resolve_adds_nothing_when_tokens_exist() -> None:
    tokenizer = make_tokenizer()
    before = len(tokenizer)
    resolved = resolve_chat_template(tokenizer, "llama3")
    assert resolved.added_tokens == ()
    assert len(tokenizer) == before


def test_resolve_eos_template_reports_the_tokenizers_eos() -> None:
    tokenizer = make_tokenizer(eos="<|endoftext|>", specials=())
    assert resolve_chat_template(tokenizer, "mistral").end_of_turn == "<|endoftext|>"


def test_resolve_eos_template_without_eos_fails_and_leaves_tokenizer_alone() -> None:
    tokenizer = make_tokenizer(eos=None, specials=())
    with pytest.raises(ValueError, match="shipped 'alpaca': ends turns with eos_token, but the tokenizer has none"):
        resolve_chat_template(tokenizer, "alpaca")
    assert tokenizer.chat_template is None


def test_resolve_says_when_it_replaces_the_models_template() -> None:
    tokenizer = make_tokenizer(chat_template=get_template("chatml").source)
    assert resolve_chat_template(tokenizer, "phi3").source == "shipped 'phi3' (replacing the model's own)"
    assert tokenizer.chat_template == get_template("phi3").source


def test_resolve_reads_jinja_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}", encoding="utf-8")
    tokenizer = make_tokenizer()
    resolved = resolve_chat_template(tokenizer, str(path))
    assert resolved.source == f"file {path}"
    assert resolved.end_of_turn is None
    rendered = tokenizer.apply_chat_template(CONV[1:3], tokenize=False)
    assert rendered == f"<user>{Q1}<assistant>{A1}"


def test_resolve_bad_jinja_names_file_line_and_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.jinja"
    path.write_text("{% for m in messages %}\n{{ m['content'] }}\n{% endfro %}\n", encoding="utf-8")
    tokenizer = make_tokenizer()
    with pytest.raises(ValueError, match=rf"file {path}: invalid Jinja at line 3: .*endfro") as err:
        resolve_chat_template(tokenizer, str(path))
    assert "Encountered unknown tag" in str(err.value)
    assert tokenizer.chat_template is None


def test_resolve_template_that_fails_to_render(tmp_path: Path) -> None:
    path = tmp_path / "picky.jinja"
    path.write_text("{{ raise_exception('needs a system message') }}", encoding="utf-8")
    with pytest.raises(ValueError, match="picky.jinja: fails to render a user/assistant exchange: needs a system"):
        resolve_chat_template(make_tokenizer(), str(path))


def test_resolve_accepts_generation_blocks(tmp_path: Path) -> None:
    # TRL-style templates mark assistant text with {% generation %}; transformers renders them.
    path = tmp_path / "marked.jinja"
    path.write_text(
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}"
        "{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}{% endfor %}",
        encoding="utf-8",
    )
    assert resolve_chat_template(make_tokenizer(), str(path)).source == f"file {path}"


def test_resolve_missing_file_and_unknown_name() -> None:
    with pytest.raises(ValueError, match="chat template file nowhere/x.jinja does not exist"):
        resolve_chat_template(make_tokenizer(), "nowhere/x.jinja")
    with pytest.raises(ValueError, match="unknown chat template 'chatm'"):
        resolve_chat_template(make_tokenizer(), "chatm")


def test_test_tokenizer_has_every_template_token() -> None:
    # The golden tests rely on these encoding as single tokens.
    tokenizer = make_tokenizer()
    for token in TEMPLATE_TOKENS:
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1


def test_end_of_turn_ids_is_eos_then_what_the_template_closes_turns_with() -> None:
    from data_templates.chat_templates import end_of_turn_ids

    tok = make_tokenizer()
    ids = lambda *tokens: [tok.convert_tokens_to_ids(t) for t in tokens]  # noqa: E731
    assert end_of_turn_ids(tok, get_template("chatml").source) == ids(tok.eos_token, "<|im_end|>")
    assert end_of_turn_ids(tok, get_template("gemma").source) == ids(tok.eos_token, "<end_of_turn>")
    # A custom closer no list names is found by rendering a reply and reading the special token after it.
    tok.add_special_tokens({"additional_special_tokens": ["<|reply_done|>"]})
    custom = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|reply_done|>\n{% endfor %}"
    assert end_of_turn_ids(tok, custom) == ids(tok.eos_token, "<|reply_done|>")
    # No template at all: every known closer the vocabulary has.
    tok.chat_template = None
    assert set(ids("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")) <= set(end_of_turn_ids(tok))
