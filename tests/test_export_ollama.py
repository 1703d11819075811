"""Ollama Modelfiles: the Go TEMPLATE renders exactly like the Jinja chat template.

Ollama itself cannot be installed here, so tests/_gotemplate.py renders the TEMPLATE with the
values Ollama passes (`.Messages`, `.System`, the Modelfile SYSTEM inserted when a chat has none)
and the result is compared with transformers' rendering of the Jinja template.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from data_templates.chat_templates import TEMPLATES
from finetune.errors import FtError
from finetune.export.ollama import go_template, write_modelfile
from finetune.export.ollama_templates import match_template
from tests._gotemplate import ollama_values, render
from tests._tokenizers import QWEN25_TEMPLATE, make_tokenizer

SYS = {"role": "system", "content": "You answer in one word."}
U = [{"role": "user", "content": t} for t in ("Capital of France?", "And of Italy?", "Thanks! Anything else?")]
A = [{"role": "assistant", "content": t} for t in ("Paris.", "Rome.")]
# Different texts from the matcher's own probes, with and without system, one to three turns.
CONVERSATIONS = [
    [U[0]], [SYS, U[0]], [U[0], A[0], U[1]], [SYS, U[0], A[0], U[1]], [SYS, U[0], A[0], U[1], A[1], U[2]],
]


def _jinja(tok, source: str, conv: list[dict[str, str]]) -> str:
    return tok.apply_chat_template(conv, chat_template=source, tokenize=False, add_generation_prompt=True)


def _assert_same(tok, source: str, name: str, system: str | None) -> None:
    go = go_template(name, tok, source)
    adds_bos = tok.bos_token_id is not None and tok.encode("a")[:1] == [tok.bos_token_id]
    for conv in CONVERSATIONS:
        expected = _jinja(tok, source, conv)
        if adds_bos and expected.startswith(tok.bos_token):
            expected = expected[len(tok.bos_token):]  # llama.cpp prepends it when tokenizing
        assert render(go, ollama_values(conv, system)) == expected, (name, conv)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_shipped_template_renders_like_jinja(name: str) -> None:
    tok = make_tokenizer(chat_template=TEMPLATES[name].source)
    matched, system = match_template(tok, TEMPLATES[name].source)
    assert matched == name
    # Alpaca's preamble is its default system prompt; no other shipped template has one.
    assert system == ("Below is an instruction that describes a task. Write a response that appropriately "
                      "completes the request." if name == "alpaca" else None)
    _assert_same(tok, TEMPLATES[name].source, name, system)


@pytest.mark.parametrize("name", ["mistral", "gemma", "llama3"])
def test_bos_left_to_llama_cpp_when_the_tokenizer_adds_it(name: str) -> None:
    tok = make_tokenizer(chat_template=TEMPLATES[name].source, adds_bos=True)
    assert "<s>" not in go_template(name, tok, TEMPLATES[name].source)
    assert "<s>" in go_template(name, make_tokenizer(), TEMPLATES[name].source)
    _assert_same(tok, TEMPLATES[name].source, name, None)


def test_model_template_with_default_system_matches_chatml() -> None:
    tok = make_tokenizer(chat_template=QWEN25_TEMPLATE)
    matched, system = match_template(tok, QWEN25_TEMPLATE)
    assert (matched, system) == ("chatml", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
    _assert_same(tok, QWEN25_TEMPLATE, "chatml", system)


def test_render_catches_a_wrong_template() -> None:
    """The comparison can fail: phi3's TEMPLATE does not render a ChatML conversation."""
    tok = make_tokenizer()
    conv = CONVERSATIONS[1]
    assert render(go_template("phi3", tok, TEMPLATES["phi3"].source), ollama_values(conv, None)) != _jinja(
        tok, TEMPLATES["chatml"].source, conv)


def test_modelfile_for_the_qwen2_tiny_model(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"GGUF")  # write_modelfile only names it
    result = write_modelfile(gguf_file, tiny_models["qwen2"], tmp_path, name="tiny-qwen")
    text = result.modelfile.read_text()
    assert text.startswith("FROM ./model.gguf\n")
    assert f'TEMPLATE """{result.template_text}"""' in text
    assert 'SYSTEM """You are Qwen, created by Alibaba Cloud. You are a helpful assistant."""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert result.create_command == f"ollama create tiny-qwen -f {tmp_path / 'Modelfile'}"


def test_unknown_template_relies_on_gguf_metadata(tiny_models: dict[str, Path], tmp_path: Path,
                                                  notices: list[str]) -> None:
    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"GGUF")
    odd = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}### assistant:"
    result = write_modelfile(gguf_file, tiny_models["llama"], tmp_path, template=odd)
    text = result.modelfile.read_text()
    assert result.template is None and not any(line.startswith("TEMPLATE") for line in text.splitlines())
    assert "tokenizer.chat_template" in text and any("matches no shipped template" in n for n in notices)


def test_bad_inputs(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FtError, match="write the GGUF first"):
        write_modelfile(tmp_path / "missing.gguf", tiny_models["llama"], tmp_path)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(FtError, match="not a model directory"):
        write_modelfile(tmp_path / "m.gguf", tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
