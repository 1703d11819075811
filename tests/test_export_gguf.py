"""GGUF export: the file loads back with transformers (and llama.cpp) as the same model.

One tiny model per supported architecture. transformers' GGUF loader rebuilds the model and the
tokenizer from the file alone, so equal logits and equal token ids show that the tensor names,
the q/k permutation, Gemma's +1 norms, the hyper-parameters and the vocabulary are all right.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from data_templates.chat_templates import get_template
from finetune.errors import FtError
from finetune.export.gguf import GgufResult, python_types, supported_types, write_gguf
from finetune.tiny import build_tiny_model, build_tokenizer
from tests.conftest import _corpus

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3"]
# Allowed max abs logit difference against the float32 model: f32 absolute (the acceptance bar),
# the others relative to the largest logit, |logit| <= 3-5 here. Measured: f32 0; f16 <= 1.2e-3;
# bf16 7e-3; q8_0 <= 3.5e-2 of the scale (the issue saw 0.2-0.3 on logits of ~7 with llama.cpp).
TOLERANCE = {"f32": 1e-3, "f16": 3e-3, "bf16": 1.5e-2, "q8_0": 5e-2}
RELATIVE = {"f16", "bf16", "q8_0"}
TEXTS = [
    "Hello there, how are you today?",
    "  leading spaces, tabs\tand\nnewlines\n\n",
    "Numbers 12345 and symbols {}[]()!?",
    "Unicode: café, naïve, 東京, emoji 🙂",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
]
# General.name for the test files: see write_gguf's docstring for why names matter to readers.
NAME = "ft-tiny"


def _tokenizer(arch: str):
    """ChatML, eos <|im_end|>; Phi-3 gets Phi-3's own specials and template (eos <|endoftext|>, turns end <|end|>)."""
    if arch == "phi3":
        return build_tokenizer(_corpus(), chat_template=get_template("phi3").source, eos_token="<|endoftext|>",
                               special_tokens=["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
                                               "<|im_start|>", "<|im_end|>"])
    return build_tokenizer(_corpus(), chat_template=get_template("chatml").source, eos_token="<|im_end|>",
                           special_tokens=["<|im_start|>", "<|im_end|>"])


def build_spm_tokenizer(chat_template: str):
    """A Llama-2/Mistral-style tokenizer.json: BPE over `▁`-prefixed pieces, <0xXX> byte fallback,
    Metaspace(prepend first, no split). Trained with word splits like SentencePiece, then saved
    the way transformers saves Llama's."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    trainer_tok = Tokenizer(tok_models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    trainer_tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=600, show_progress=False))
    learned = json.loads(trainer_tok.to_str())
    ordered = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + sorted(
        learned["model"]["vocab"], key=learned["model"]["vocab"].get)
    learned["model"].update(vocab={t: i for i, t in enumerate(dict.fromkeys(ordered))}, byte_fallback=True,
                            unk_token="<unk>", fuse_unk=True)
    learned["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    learned["decoder"] = json.loads(decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                                       decoders.Fuse(), decoders.Strip(" ", 1, 0)]).__getstate__())
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(learned)), bos_token="<s>",
                                  eos_token="</s>", unk_token="<unk>")
    tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = build_spm_tokenizer(get_template("mistral").source)
    return build_tiny_model("mistral", tok, tmp_path_factory.mktemp("spm") / "model", initializer_range=0.1)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf-models")
    # initializer_range 0.1: logits spread enough that greedy decoding is not one repeated token.
    return {arch: build_tiny_model(arch, _tokenizer(arch), root / arch, initializer_range=0.1) for arch in ARCHS}


def _export(model_dir: Path, out: Path, type: str) -> GgufResult:
    return write_gguf(model_dir, out / f"model-{type}.gguf", type, name=NAME)


def _check_roundtrip(model_dir: Path, result: GgufResult, tolerance: float) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    original = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    loaded = AutoModelForCausalLM.from_pretrained(result.path.parent, gguf_file=result.path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok_gguf = AutoTokenizer.from_pretrained(result.path.parent, gguf_file=result.path.name)
    for text in TEXTS:
        assert tok_gguf.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False), text
    ids = torch.tensor([tok.encode(" ".join(TEXTS))])
    with torch.no_grad():
        reference = original(ids).logits
        diff = (reference - loaded(ids).logits).abs().max().item()
    print(f"{result.architecture} {result.type}: max abs logit diff {diff:.2e} (logit scale {reference.abs().max():.2f})")
    if result.type in RELATIVE:
        tolerance *= reference.abs().max().item()
    assert diff <= tolerance, f"{result.type}: max abs logit difference {diff} > {tolerance}"


@pytest.mark.parametrize("arch", ARCHS)
def test_f32_loads_back_with_transformers(models: dict[str, Path], arch: str, tmp_path: Path) -> None:
    result = _export(models[arch], tmp_path, "f32")
    assert result.type == "f32" and result.quantize_command is None
    _check_roundtrip(models[arch], result, TOLERANCE["f32"])


@pytest.mark.parametrize("type", ["f16", "bf16", "q8_0"])
def test_reduced_types_within_tolerance(models: dict[str, Path], type: str, tmp_path: Path) -> None:
    result = _export(models["llama"], tmp_path, type)
    assert result.type == type
    _check_roundtrip(models["llama"], result, TOLERANCE[type])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("type", ["f16", "q8_0"])
def test_reduced_types_every_architecture(models: dict[str, Path], arch: str, type: str, tmp_path: Path) -> None:
    _check_roundtrip(models[arch], _export(models[arch], tmp_path, type), TOLERANCE[type])


def test_sentencepiece_tokenizer_loads_back(spm_model: Path, tmp_path: Path) -> None:
    import gguf

    result = _export(spm_model, tmp_path, "f32")
    _check_roundtrip(spm_model, result, TOLERANCE["f32"])
    fields = {name: f.contents() for name, f in gguf.GGUFReader(result.path).fields.items()}
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("llama", "default")
    tokens, types, scores = (fields[f"tokenizer.ggml.{k}"] for k in ("tokens", "token_type", "scores"))
    assert types[tokens.index("<0x41>")] == 6 and types[tokens.index("<unk>")] == 2
    # the first merge's token scores highest among merged tokens: llama.cpp applies it first
    first = "".join(json.loads((spm_model / "tokenizer.json").read_text())["model"]["merges"][0])
    assert scores[tokens.index(first)] == 0.0 and min(scores) < 0


def test_metadata(models: dict[str, Path], tmp_path: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(_export(models["phi3"], tmp_path, "f16").path)
    fields = {name: f.contents() for name, f in reader.fields.items()}
    tok = _tokenizer("phi3")
    assert fields["general.architecture"] == "phi3"
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.eos_token_id"] == tok.convert_tokens_to_ids("<|endoftext|>")
    assert fields["tokenizer.ggml.eot_token_id"] == tok.convert_tokens_to_ids("<|end|>")
    assert fields["tokenizer.chat_template"] == get_template("phi3").source
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["phi3.context_length"] == 1024 and fields["phi3.block_count"] == 2
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_qkv.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"


def test_gemma2_norms_and_softcapping(models: dict[str, Path], tmp_path: Path) -> None:
    """llama.cpp stores Gemma's 1 + weight, and reads the soft-capping values from metadata."""
    import gguf
    from safetensors.torch import load_file

    reader = gguf.GGUFReader(_export(models["gemma2"], tmp_path, "f32").path)
    fields = {name: f.contents() for name, f in reader.fields.items()}
    config = json.loads((models["gemma2"] / "config.json").read_text())
    assert fields["gemma2.attn_logit_softcapping"] == pytest.approx(config["attn_logit_softcapping"])
    assert fields["gemma2.final_logit_softcapping"] == pytest.approx(config["final_logit_softcapping"])
    stored = next(t for t in reader.tensors if t.name == "output_norm.weight").data
    hf = load_file(models["gemma2"] / "model.safetensors")["model.norm.weight"].numpy()
    assert (stored == hf + 1).all()


def test_llama_quantize_types_write_f16_and_the_command(models: dict[str, Path], tmp_path: Path,
                                                        notices: list[str]) -> None:
    result = _export(models["qwen2"], tmp_path, "q4_k_m")
    assert (result.type, result.requested) == ("f16", "q4_k_m")
    assert result.quantize_command == f"llama-quantize {result.path} {tmp_path / 'model-q4_k_m-q4_k_m.gguf'} Q4_K_M"
    assert any("llama-quantize" in n for n in notices)


def test_python_types_include_the_required_ones() -> None:
    assert {"f32", "f16", "bf16", "q8_0", "q4_0", "q5_0"} <= set(python_types())
    assert "q4_k_m" in supported_types()


def _left(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_refusals_leave_nothing_behind(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(FtError, match="supported: f32, f16, bf16, q8_0"):
        write_gguf(models["llama"], out / "m.gguf", "q3_xyz")
    with pytest.raises(FtError, match="not a model directory"):
        write_gguf(tmp_path / "nowhere", out / "m.gguf", "f16")
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(models["llama"], gpt2)
    config = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(FtError, match="supported: gemma2, llama, mistral, phi3, qwen2, qwen3"):
        write_gguf(gpt2, out / "m.gguf", "f16")
    assert _left(out) == []


def test_unknown_pre_tokenizer_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    shutil.copytree(models["qwen2"], odd)
    tok_json = json.loads((odd / "tokenizer.json").read_text())
    tok_json["pre_tokenizer"] = {"type": "Whitespace"}
    (odd / "tokenizer.json").write_text(json.dumps(tok_json))
    with pytest.raises(FtError, match="cannot describe this tokenizer's pre-tokenizer"):
        write_gguf(odd, tmp_path / "out" / "m.gguf", "f16")
    assert _left(tmp_path / "out") == []


def test_failure_while_writing_leaves_nothing(models: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import gguf

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    with pytest.raises(FtError, match="No space left"):
        write_gguf(models["llama"], tmp_path / "out" / "m.gguf", "f16")
    assert _left(tmp_path / "out") == []


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_llama_cpp_greedy_equals_transformers(models: dict[str, Path], arch: str, tmp_path: Path) -> None:
    """llama.cpp (through llama-cpp-python) generates the same greedy tokens from the f32 file."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = _export(models[arch], tmp_path, "f32")
    tok = AutoTokenizer.from_pretrained(models[arch])
    model = AutoModelForCausalLM.from_pretrained(models[arch], dtype=torch.float32)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What does a tokenizer do?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok.encode(prompt, add_special_tokens=False)
    expected = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                              pad_token_id=0)[0, len(ids):].tolist()
    llm = llama_cpp.Llama(str(result.path), n_ctx=256, verbose=False, seed=0)
    try:
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
        got = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            got.append(int(token))
            if len(got) == len(expected):
                break
    finally:
        llm.close()
    assert got == expected


@pytest.mark.slow
def test_llama_cpp_sentencepiece(spm_model: Path, tmp_path: Path) -> None:
    """llama.cpp tokenizes like transformers with ft's scores, and decodes the same greedy tokens.

    Known differences, not ft's: llama.cpp (like SentencePiece) prepends `▁` to text that already
    starts with a space and to the text right after a special token (`<s>[INST]` -> `▁[`), where
    transformers' Metaspace(prepend_scheme="first") does neither. So plain texts are compared, and
    generation starts from transformers' prompt ids.
    """
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = _export(spm_model, tmp_path, "f32")
    tok = AutoTokenizer.from_pretrained(spm_model)
    model = AutoModelForCausalLM.from_pretrained(spm_model, dtype=torch.float32)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What does a tokenizer do?"}], tokenize=False)
    llm = llama_cpp.Llama(str(result.path), n_ctx=256, verbose=False, seed=0)
    try:
        for text in [t for t in TEXTS if not t.startswith(" ") and "<|" not in t]:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text, add_special_tokens=False)
        ids = tok.encode(prompt, add_special_tokens=False)
        expected = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)[0, len(ids):].tolist()
        got = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            got.append(int(token))
            if len(got) == len(expected):
                break
    finally:
        llm.close()
    assert got == expected


@pytest.mark.slow
def test_llama3_rope_scaling_matches_in_llama_cpp(models: dict[str, Path], tmp_path: Path) -> None:
    """Llama 3.1's "llama3" rope goes into a rope_freqs tensor; llama.cpp then computes the same logits.

    transformers' GGUF loader ignores rope_freqs (it reads no rope scaling for llama), so this
    file is checked with llama.cpp only; without llama-cpp-python the test skips.
    """
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scaled = tmp_path / "llama31"
    shutil.copytree(models["llama"], scaled)
    config = json.loads((scaled / "config.json").read_text())
    # A short original context so that the 8 frequencies of head_dim 16 fall in all three bands.
    config["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    (scaled / "config.json").write_text(json.dumps(config))
    result = _export(scaled, tmp_path, "f32")
    tok = AutoTokenizer.from_pretrained(scaled)
    ids = tok.encode(" ".join(TEXTS), add_special_tokens=False)
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(scaled, dtype=torch.float32)(torch.tensor([ids])).logits[0]
        plain = AutoModelForCausalLM.from_pretrained(models["llama"], dtype=torch.float32)(torch.tensor([ids])).logits[0]
    llm = llama_cpp.Llama(str(result.path), n_ctx=256, verbose=False, logits_all=True)
    try:
        llm.eval(ids)
        got = np.asarray(llm.scores[: len(ids)])
    finally:
        llm.close()
    assert np.abs(got - reference.numpy()).max() < 1e-2  # llama.cpp's own arithmetic: ~2e-3 on f32 files
    assert np.abs(plain.numpy() - reference.numpy()).max() > 0.1, "the scaling must matter for the test to mean anything"
