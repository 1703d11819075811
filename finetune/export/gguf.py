"""`write_gguf`: a transformers model directory as one GGUF file for llama.cpp and Ollama.

Written by ft itself with llama.cpp's `gguf` Python package (the optional extra
`pip install -e ".[gguf]"`): no llama.cpp clone, no compiler. Every check that can fail runs
before the file is opened, and the file is written under a temporary name in the target
directory and renamed at the end, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from finetune.errors import FtError
from finetune.export import gguf_arch, gguf_tokenizer
from finetune.export.turns import chat_template_of, end_of_turn_tokens
from finetune.notices import notice

# Types only llama.cpp's `llama-quantize` produces (k-quants, i-quants): ft writes f16 and prints
# the command. Values are llama-quantize's spelling.
LLAMA_QUANTIZE_TYPES = {
    name: name.upper()
    for name in ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
                 "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq3_xxs", "iq3_xs", "iq3_s", "iq3_m", "iq4_nl", "iq4_xs")
}
# Candidate types written in Python; `python_types()` keeps those the installed gguf can produce.
_CANDIDATES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "tq1_0", "tq2_0", "mxfp4")


@dataclass(frozen=True)
class GgufResult:
    """What `write_gguf` wrote, and the follow-up command when a type needs llama.cpp."""

    path: Path
    type: str  # the type written (f16 when `requested` needs llama-quantize)
    requested: str
    architecture: str  # the GGUF architecture name (llama, qwen2, ...)
    tensors: int
    quantize_command: str | None = None  # `llama-quantize IN OUT TYPE` to reach `requested`
    fallbacks: list[str] = field(default_factory=list)  # tensors kept f16 (row not a block multiple)


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise FtError('GGUF export needs the gguf package: pip install -e ".[gguf]"') from None
    return gguf


def python_types() -> list[str]:
    """The `--type` values ft writes itself with the installed gguf package."""
    gguf = _gguf()
    probe = np.ones((1, 256), dtype=np.float32)
    found = ["f32", "f16"]
    for name in _CANDIDATES[2:]:
        qtype = getattr(gguf.GGMLQuantizationType, name.upper(), None)
        try:
            gguf.quants.quantize(probe, qtype)
        except (NotImplementedError, gguf.quants.QuantError, AttributeError, TypeError):
            continue
        found.append(name)
    return found


def supported_types() -> list[str]:
    return python_types() + sorted(LLAMA_QUANTIZE_TYPES)


def _read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not model_dir.is_dir() or not path.is_file():
        raise FtError(f"{model_dir} is not a model directory (no config.json); export a merged model first")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg = {**cfg.get("text_config", {}), **cfg} if "text_config" in cfg else cfg
    return cfg


def _weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FtError(f"{model_dir} has no *.safetensors weights; save the model with safe_serialization")
    return files


def _plan_names(model_dir: Path, cfg: dict[str, Any], spec: gguf_arch.ArchSpec) -> dict[str, str]:
    """HF tensor name -> GGUF name for every tensor, refusing any tensor ft cannot place."""
    from safetensors import safe_open

    gguf = _gguf()
    arch = getattr(gguf.MODEL_ARCH, spec.gguf_arch)
    name_map = gguf.get_tensor_name_map(arch, int(cfg["num_hidden_layers"]))
    plan: dict[str, str] = {}
    for path in _weight_files(model_dir):
        with safe_open(str(path), framework="pt") as handle:
            for hf_name in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue
                if hf_name.startswith("lm_head.") and cfg.get("tie_word_embeddings"):
                    continue  # tied: llama.cpp reads the output layer from token_embd
                name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise FtError(f"{path.name}: tensor {hf_name} has no GGUF name for {spec.gguf_arch.lower()}; "
                                  "ft cannot convert this model")
                plan[hf_name] = name
    return plan


def _tensor_type(name: str, data: np.ndarray, qtype: Any, gguf: Any) -> Any:
    """Norms and biases stay f32 (as llama.cpp does); rows not a whole number of blocks fall back to f16."""
    if data.ndim < 2:
        return gguf.GGMLQuantizationType.F32
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if data.shape[-1] % block:
        return gguf.GGMLQuantizationType.F16
    return qtype


def _encode(data: np.ndarray, qtype: Any, gguf: Any) -> tuple[np.ndarray, Any]:
    if qtype == gguf.GGMLQuantizationType.F32:
        return data.astype(np.float32), None
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16), None
    return gguf.quants.quantize(data.astype(np.float32), qtype), qtype


def _write_tensors(writer: Any, model_dir: Path, plan: dict[str, str], cfg: dict[str, Any],
                   spec: gguf_arch.ArchSpec, qtype: Any) -> list[str]:
    from safetensors import safe_open

    gguf = _gguf()
    fallbacks = []
    for path in _weight_files(model_dir):
        with safe_open(str(path), framework="pt") as handle:
            for hf_name in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                if hf_name not in plan:
                    continue
                data = gguf_arch.transform(hf_name, handle.get_tensor(hf_name).float().numpy(), cfg, spec)
                chosen = _tensor_type(plan[hf_name], data, qtype, gguf)
                if chosen != qtype and data.ndim >= 2:
                    fallbacks.append(plan[hf_name])
                encoded, raw = _encode(data, chosen, gguf)
                writer.add_tensor(plan[hf_name], encoded, raw_dtype=raw)
    for name, data in gguf_arch.extra_tensors(cfg, spec).items():
        writer.add_tensor(name, data.astype(np.float32))
    return fallbacks


def _check_type(type: str) -> tuple[str, str | None]:
    """(type to write, llama-quantize type or None), or FtError listing the supported types."""
    name = type.lower()
    if name in LLAMA_QUANTIZE_TYPES:
        return "f16", LLAMA_QUANTIZE_TYPES[name]
    if name not in python_types():
        raise FtError(f"GGUF type {type!r} is not supported; supported: {', '.join(supported_types())}")
    return name, None


def write_gguf(model_dir: Path, out_file: Path, type: str = "f16", name: str | None = None) -> GgufResult:
    """Write the transformers model in `model_dir` to `out_file` as GGUF of `type`.

    `name` is `general.name` (default: the directory's name). Readers key family quirks on it:
    llama.cpp gives special tokens Phi-3's strip rules when it contains "phi3", and transformers
    5.23's GGUF loader reads a llama file whose name contains "mistral" as a Mistral, which
    gguf 0.19 has no tensor map for, so it cannot load it.

    A type only `llama-quantize` makes (q4_k_m, ...) is written as f16; the result carries the
    command that turns it into the requested type, and a notice says so.
    """
    from transformers import AutoTokenizer

    gguf = _gguf()
    model_dir, out_file = Path(model_dir), Path(out_file)
    written, quantize_to = _check_type(type)
    cfg = _read_config(model_dir)
    spec = gguf_arch.arch_spec(cfg)
    gguf_arch.check_hparams(cfg, spec)
    plan = _plan_names(model_dir, cfg, spec)
    gguf_tokenizer.check_tokenizer(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    template = chat_template_of(tokenizer)
    vocab = gguf_tokenizer.build_vocab(model_dir, tokenizer, int(cfg["vocab_size"]),
                                       end_of_turn_tokens(tokenizer, model_dir, template), template)
    qtype = getattr(gguf.GGMLQuantizationType, written.upper())
    file_type = gguf.LlamaFileType.ALL_F32 if written == "f32" else getattr(gguf.LlamaFileType, f"MOSTLY_{written.upper()}",
                                                                            gguf.LlamaFileType.GUESSED)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.parent / f".{out_file.name}.tmp-{os.getpid()}"
    arch_name = gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, spec.gguf_arch)]
    try:
        writer = gguf.GGUFWriter(str(tmp), arch_name)
        writer.add_name(name or model_dir.name)
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        gguf_arch.write_hparams(writer, cfg, spec)
        gguf_tokenizer.write_tokenizer(writer, vocab)
        fallbacks = _write_tensors(writer, model_dir, plan, cfg, spec, qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_file)
    except OSError as err:
        raise FtError(f"could not write {out_file}: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    command = None
    if quantize_to is not None:
        target = out_file.with_name(f"{out_file.stem}-{type.lower()}.gguf")
        command = f"llama-quantize {out_file} {target} {quantize_to}"
        notice(f"GGUF type {type} needs llama.cpp's llama-quantize; wrote f16 to {out_file}. Run: {command}")
    if fallbacks:
        notice(f"GGUF {written}: {len(fallbacks)} tensors kept as f16 (rows not a multiple of the block size)")
    tensors = len(plan) + len(gguf_arch.extra_tensors(cfg, spec))
    return GgufResult(out_file, written, type.lower(), arch_name, tensors, command, fallbacks)
