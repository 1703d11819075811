"""finetune.tiny: tokenizers that round-trip any text, tiny models of every listed architecture
that load back with the Auto classes and generate, and the session's shared tiny world."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from finetune.tiny import ARCHITECTURES, build_tiny_model, build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ["The quick brown fox jumps over the lazy dog.", "Hello, world! How are you today?", "system user assistant"]
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]
# Spaces, tabs, blank lines, punctuation, accents, CJK, emoji and a control token mid-text.
AWKWARD = "  Héllo,\tworld!\n\n  (a+b)*c = 42;  日本語 🙂 <|im_start|>user\nhi<|im_end|>\n"


@pytest.fixture(scope="module")
def chat_tokenizer() -> PreTrainedTokenizerBase:
    return build_tokenizer(CORPUS, special_tokens=CHATML_TOKENS, eos_token="<|im_end|>")


def test_tokenizer_round_trips_text_and_keeps_control_tokens_whole(chat_tokenizer: PreTrainedTokenizerBase) -> None:
    ids = chat_tokenizer(AWKWARD, add_special_tokens=False)["input_ids"]
    assert chat_tokenizer.decode(ids) == AWKWARD
    for token in CHATML_TOKENS:
        assert chat_tokenizer.encode(token, add_special_tokens=False) == [chat_tokenizer.convert_tokens_to_ids(token)]
    # Merges were learned: a corpus word is one token, not one per byte.
    assert len(chat_tokenizer.tokenize(" quick")) == 1


def test_offsets_point_back_into_the_text(chat_tokenizer: PreTrainedTokenizerBase) -> None:
    enc = chat_tokenizer(AWKWARD, return_offsets_mapping=True, add_special_tokens=False)
    pieces = [AWKWARD[a:b] for a, b in enc["offset_mapping"]]
    assert pieces[:4] == [" ", " ", "H", "é"]
    im_start = chat_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert pieces[enc["input_ids"].index(im_start)] == "<|im_start|>"
    # Every character is covered by some token's span (a multi-byte character by several).
    covered = {i for a, b in enc["offset_mapping"] for i in range(a, b)}
    assert covered == set(range(len(AWKWARD)))


def test_special_token_ids_are_fixed_and_named() -> None:
    tok = build_tokenizer(CORPUS, special_tokens=CHATML_TOKENS)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert [tok.convert_tokens_to_ids(t) for t in CHATML_TOKENS] == [4, 5]
    assert tok("hi")["input_ids"][0] != tok.bos_token_id  # no bos unless asked for

    qwen_like = build_tokenizer(CORPUS, bos_token=None, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                special_tokens=CHATML_TOKENS)
    assert qwen_like.bos_token is None and qwen_like.pad_token == "<|endoftext|>"
    assert qwen_like.convert_ids_to_tokens(qwen_like.eos_token_id) == "<|im_end|>"


def test_tokenizer_training_is_deterministic() -> None:
    a, b = build_tokenizer(CORPUS * 3), build_tokenizer(CORPUS * 3)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()


def test_chat_template_is_set_and_renders() -> None:
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    tok = build_tokenizer(CORPUS, chat_template=template)
    assert tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False) == "user: Hi\n"
    assert build_tokenizer(CORPUS).chat_template is None


def test_add_bos_token_prepends_bos_and_survives_save_and_load(tmp_path: Path) -> None:
    tok = build_tokenizer(CORPUS, add_bos_token=True)
    assert tok("Hello")["input_ids"][0] == tok.bos_token_id
    assert tok("Hello", add_special_tokens=False)["input_ids"][0] != tok.bos_token_id
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("Hello")["input_ids"] == tok("Hello")["input_ids"]


@pytest.mark.parametrize("bad", [{"vocab_size": 100}, {"add_bos_token": True, "bos_token": None}])
def test_bad_tokenizer_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build_tokenizer(CORPUS, **bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_loads_back_offline_and_generates(
    arch: str, chat_tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    out = build_tiny_model(arch, chat_tokenizer, tmp_path / arch, hidden_size=32, num_heads=4, num_kv_heads=2)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == arch
    assert model.config.vocab_size == len(tokenizer) == len(chat_tokenizer)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert (model.config.eos_token_id, model.config.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id

    # The reloaded tokenizer is the same tokenizer, whatever class AutoTokenizer picked for it.
    assert tokenizer(AWKWARD)["input_ids"] == chat_tokenizer(AWKWARD)["input_ids"]
    assert tokenizer.decode(tokenizer(AWKWARD)["input_ids"]) == AWKWARD

    enc = tokenizer("The quick brown fox", return_tensors="pt")
    with torch.no_grad():
        out_ids = model.generate(**enc, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert out_ids.shape == (1, enc["input_ids"].shape[1] + 5)


def test_model_is_deterministic_in_its_seed(chat_tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    paths = [build_tiny_model("llama", chat_tokenizer, tmp_path / name, seed=seed)
             for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    assert torch.rand(1) == before, "building a model must not consume the caller's random numbers"
    a, b, c = (load_file(p / "model.safetensors") for p in paths)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_sizes_and_initializer_range_reach_the_model(chat_tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    out = build_tiny_model("qwen2", chat_tokenizer, tmp_path, hidden_size=48, num_layers=3, num_heads=6,
                           num_kv_heads=3, intermediate_size=40, initializer_range=0.5)
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (48, 3, 6)
    assert (config["num_key_value_heads"], config["intermediate_size"]) == (3, 40)
    weight = load_file(out / "model.safetensors")["model.layers.0.mlp.up_proj.weight"]
    assert 0.4 < weight.std().item() < 0.6


def test_unknown_architecture_lists_the_known_ones(chat_tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown architecture 'gpt5'.*gemma, gemma2, llama, mistral, mixtral, olmoe, phi3, qwen2, qwen2_moe, qwen3, qwen3_moe"):
        build_tiny_model("gpt5", chat_tokenizer, tmp_path)
    assert not any(tmp_path.iterdir()), "nothing is written for a model that cannot be built"


@pytest.mark.parametrize("shape", [{"hidden_size": 30, "num_heads": 4}, {"num_heads": 4, "num_kv_heads": 3}])
def test_impossible_shapes_are_refused(shape: dict[str, int], chat_tokenizer: PreTrainedTokenizerBase,
                                       tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not divisible"):
        build_tiny_model("llama", chat_tokenizer, tmp_path, **shape)


# The session's shared world (tests/conftest.py).

def test_the_session_is_offline_with_a_private_cache() -> None:
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert Path(os.environ["HF_HOME"]).name.startswith("ft-tests-hf-home-")


def test_session_models_have_the_shapes_tests_rely_on(tiny_models: dict[str, Path]) -> None:
    assert {"llama", "qwen2", "mistral"} <= set(tiny_models)
    toks = {name: AutoTokenizer.from_pretrained(path) for name, path in tiny_models.items()}
    chat = [{"role": "user", "content": "What is ft?"}]

    assert toks["llama"].apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nWhat is ft?<|im_end|>\n<|im_start|>assistant\n")
    assert toks["llama"].eos_token == "<|im_end|>" and toks["llama"].pad_token == "<pad>"

    qwen = toks["qwen2"].apply_chat_template(chat, tokenize=False)
    assert qwen.startswith("<|im_start|>system\nYou are Qwen") and toks["qwen2"].bos_token is None
    assert toks["qwen2"].pad_token == "<|endoftext|>"

    base = toks["mistral"]
    assert not base.chat_template and base.pad_token is None
    assert base("Hello")["input_ids"][0] == base.bos_token_id and base.eos_token == "</s>"


def test_session_data_files(tiny_chat_data: Path, tiny_text_data: Path) -> None:
    chats = [json.loads(line)["messages"] for line in tiny_chat_data.read_text().splitlines()]
    assert len(chats) >= 8 and all(m[-1]["role"] == "assistant" for m in chats)
    texts = [json.loads(line)["text"] for line in tiny_text_data.read_text().splitlines()]
    assert len(texts) >= 8 and all(texts)


def test_the_shipped_quickstart_model_loads_and_is_small() -> None:
    path = ROOT / "examples" / "models" / "tiny-chat"
    assert sum(p.stat().st_size for p in path.iterdir()) < 3_000_000
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    from data_templates.chat_templates import get_template

    assert tokenizer.chat_template == get_template("chatml").source
    assert model.config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id
    # Its tokenizer was trained on the quickstart data: the replies are mostly whole words.
    reply = "ft is a toolkit for fine-tuning language models from one recipe."
    assert len(tokenizer.tokenize(reply)) <= 14
