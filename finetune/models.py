"""Load the tokenizer and the base model named by a recipe, full precision or 4-bit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.errors import ConfigError, FtError
from finetune.hardware import Hardware, resolve_dtype
from finetune.model_kinds import (
    ModelKind,
    kind_of_config,
    kind_of_task_type,
    model_kind,
)
from finetune.recipe.schema import ModelSection, QLoraAdapter

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class ModelNotFoundError(FtError):
    """The model or tokenizer could not be found locally nor fetched from the Hub."""


class ModelLoadError(FtError):
    """The model directory exists, but its files cannot be loaded (unreadable config or weights)."""


class RunNotFoundError(FtError, FileNotFoundError):
    """The path is not a run directory (or a final/ directory) ft can load."""


def _hub_kwargs(section: ModelSection) -> dict[str, Any]:
    return {"revision": section.revision, "trust_remote_code": section.trust_remote_code}


def model_location(section: ModelSection) -> str:
    """An existing local directory as an absolute path (an adapter records it as its base, so the
    run loads from any working directory); a Hub id as it is."""
    path = Path(section.name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else section.name_or_path


def _not_found(section: ModelSection, what: str, err: Exception) -> ModelNotFoundError:
    from finetune.recipe.checks import looks_local

    name = section.name_or_path
    if Path(name).expanduser().is_file():
        return ModelNotFoundError(f"model.name_or_path: {Path(name).expanduser().resolve()} is a file; point it at "
                                  f"the model's directory (the one that holds config.json)")
    if Path(name).expanduser().is_dir():
        return ModelNotFoundError(f"model.name_or_path: {name} is a directory but its {what} could not be loaded: {err}")
    if looks_local(name):
        return ModelNotFoundError(f"model.name_or_path: model directory not found: {Path(name).expanduser().resolve()}")
    return ModelNotFoundError(
        f"model.name_or_path: could not find {name!r}: it is not a local directory, and it could not be "
        f"fetched from the Hugging Face Hub (offline, or not a valid id). Download it where you have a "
        f"network (`hf download {name}`) or point model.name_or_path at a local directory.\n  cause: "
        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    )


_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def check_model_files(section: ModelSection) -> None:
    """At the very start of a run, before any data or weights load: a local model directory has a
    config.json that transformers reads and weight files whose headers read (no tensor is read)."""
    from transformers import AutoConfig

    path = Path(section.name_or_path).expanduser()
    if is_adapter_dir(path):
        _check_adapter_base(path)
        return  # merged into its base before training (finetune.pipeline.base_section)
    if not path.is_dir():
        if path.is_file():
            raise _not_found(section, "model", FileNotFoundError(str(path)))
        return  # a Hub id, or a missing path: the tokenizer load says which
    config = path / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"model.name_or_path: {config} does not exist; a model directory holds config.json "
                             f"next to its weights (save one with model.save_pretrained)")
    try:
        AutoConfig.from_pretrained(path, trust_remote_code=section.trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"{config}: transformers cannot read it: {_first_line(err)}") from None
    files = [f for pattern in _WEIGHTS for f in sorted(path.glob(pattern))]
    if not files and not any(path.glob("*.safetensors.index.json")):
        raise ModelLoadError(f"model.name_or_path: {path} has no weight files ({', '.join(_WEIGHTS)})")
    for weights in (f for f in files if f.suffix == ".safetensors"):
        _check_safetensors(weights)


def _check_adapter_base(adapter_dir: Path) -> None:
    from finetune.recipe.checks import looks_local

    try:
        base = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"{adapter_dir / 'adapter_config.json'}: unreadable adapter config "
                             f"({_first_line(err)})") from None
    if looks_local(str(base)) and not Path(str(base)).expanduser().exists():
        raise ModelNotFoundError(f"model.name_or_path: {adapter_dir} is an adapter whose base model {base} does not "
                                 f"exist (moved or deleted?); restore it, or fix base_model_name_or_path in "
                                 f"{adapter_dir / 'adapter_config.json'}")


def _check_safetensors(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise ModelLoadError(f"{path}: the weights cannot be read ({_first_line(err)}); the file is truncated or "
                             f"not safetensors: copy or download it again") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_tokenizer(section: ModelSection) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    from finetune.hub import hub_offline

    if not Path(section.name_or_path).expanduser().exists():
        hub_offline()

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_location(section), **_hub_kwargs(section))
    except (OSError, ValueError) as err:
        raise _not_found(section, "tokenizer", err) from None
    if tokenizer.pad_token is None:
        # Padding positions are masked out of the loss and attention; eos is a safe stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_vision(section: ModelSection, kind: str) -> Any:
    """The image processor of a vision-language model kind (data_templates.vision.VisionProcessor), read
    from the model's preprocessor_config.json; None for a text kind."""
    from data_templates.vision import load_vision as read_vision
    from finetune.hub import hub_offline

    chosen = model_kind(kind)
    if chosen.image_processor is None:
        return None
    if not Path(section.name_or_path).expanduser().exists():
        hub_offline()
    location = model_location(section)
    # A LoRA run named as the model (merged into base/ before training): its final/ has the image
    # processor, its base the config.
    base = json.loads((Path(location) / "adapter_config.json").read_text())["base_model_name_or_path"] \
        if is_adapter_dir(location) else None
    try:
        return read_vision(location, chosen.image_processor_class(), section.trust_remote_code, base)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.name_or_path: {section.name_or_path} has no image processor ft can use for "
                          f"model kind {kind} ({_first_line(err)}); a vision-language model directory holds "
                          f"preprocessor_config.json next to config.json") from None


def quantization_config(adapter: Any, hardware: Hardware, for_fsdp: bool = False) -> Any:
    """bitsandbytes 4-bit config for QLoRA, else None."""
    if not isinstance(adapter, QLoraAdapter):
        return None
    import torch
    from transformers import BitsAndBytesConfig

    compute = resolve_dtype(adapter.compute_dtype, hardware)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=adapter.quant_type,
        bnb_4bit_use_double_quant=adapter.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, compute),
        # Output heads stay in full precision: the LM head (TRL's chunked loss multiplies by its weight
        # directly), a reward model's score head and a classifier, which are trained, and a masked LM's
        # output layer (BERT's cls.predictions.decoder, ModernBERT's top-level decoder; RoBERTa's is under
        # lm_head), which is tied to the input embeddings: quantized, it breaks the tie and bitsandbytes
        # refuses the embedding-shaped weight. Giving a list replaces transformers' own defaults (output
        # and tied embeddings), so they are named here. `decoder$` is the top-level module only, never a
        # seq2seq model's decoder stack.
        llm_int8_skip_modules=["lm_head", "score", "classifier", "predictions.decoder", "decoder$"],
        # FSDP shards units of one dtype: under FSDP the 4-bit weights are stored in the compute dtype
        # (the default uint8 storage cannot be sharded with the LoRA weights); same bytes, packed.
        bnb_4bit_quant_storage=getattr(torch, compute) if for_fsdp else torch.uint8,
    )


def load_model(section: ModelSection, adapter: Any, hardware: Hardware, kind: str = "causal_lm",
               config: dict[str, Any] | None = None, for_fsdp: bool = False) -> PreTrainedModel:
    """The recipe's base model for training, with the head of model kind `kind`, full precision or
    4-bit; `config` sets what the objective decides (a classifier's num_labels and label names)."""
    import torch

    kwargs: dict[str, Any] = {**_hub_kwargs(section), "dtype": getattr(torch, resolve_dtype(section.dtype, hardware))}
    if section.attn_implementation:
        kwargs["attn_implementation"] = section.attn_implementation
    kwargs.update(config or {})
    quant = quantization_config(adapter, hardware, for_fsdp)
    if quant is not None:
        kwargs["quantization_config"] = quant
        # bitsandbytes quantizes while loading onto the target device.
        kwargs["device_map"] = {"": _local_device(hardware)}
    location = model_location(section)
    if is_adapter_dir(location):
        raise ConfigError(f"model.name_or_path: {location} is an adapter; ft merges a LoRA run's final/ into "
                          f"its base before training on it (finetune.pipeline.base_section)")
    try:
        return model_kind(kind).auto().from_pretrained(location, **kwargs)
    except OSError as err:
        raise _not_found(section, "weights", err) from None
    except (RuntimeError, ValueError) as err:
        if "Unrecognized configuration class" in str(err):  # the architecture has no head of this kind
            raise ConfigError(f"model.name_or_path: {location} cannot be loaded as {model_kind(kind).auto().__name__} "
                              f"(model kind {kind}, which the objective needs): transformers has no such head for "
                              f"its architecture ({_first_line(err)})") from None
        files = ", ".join(f.name for pattern in _WEIGHTS for f in sorted(Path(location).glob(pattern))) or location
        mismatch = "mismatched_sizes" in str(err) or "size mismatch" in str(err)
        why = "have other shapes than its config.json says" if mismatch else f"do not load: {_first_line(err)}"
        raise ModelLoadError(f"model.name_or_path: the weights in {location} ({files}) {why}") from None


def is_adapter_dir(location: str | Path) -> bool:
    """A PEFT adapter directory (a LoRA run's final/), as opposed to a whole model. The one test."""
    return (Path(location) / "adapter_config.json").is_file()


def final_dir(path: str | Path) -> Path:
    """The trained model of a run directory (its final/), or `path` itself when it is a model."""
    path = Path(path).expanduser()
    for candidate in (path / "final", path):
        if is_adapter_dir(candidate) or (candidate / "config.json").is_file():
            return candidate
    raise RunNotFoundError(f"{path}: no trained model here (expected final/ with config.json or "
                           f"adapter_config.json); pass a run directory written by `ft run`")


def adapter_kind(adapter_dir: str | Path) -> ModelKind:
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return kind_of_task_type(config.get("task_type"))


def saved_kind(model_dir: str | Path) -> ModelKind:
    """The generating kind a whole saved model is (an encoder-decoder's config says so), for loaders
    not told the kind."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        config = {}  # loading reports an unreadable config, naming the file
    return kind_of_config(config if isinstance(config, dict) else {})


def load_trained(path: str | Path, *, kind: str | None = None, dtype: str = "float32", merge: bool = False,
                 num_labels: int | None = None, trust_remote_code: bool = False,
                 with_tokenizer: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) of a run directory, its final/, or any model directory: the one loader for
    everything after training (generation, evaluation, export, reward scoring, a next stage).

    An adapter is put on its base, which is read from the adapter's config and loaded unquantized
    (a QLoRA run's base included), with embeddings resized to the adapter's tokenizer when the chat
    template added tokens (`num_labels`: the head size of an adapter trained on a classifier). `merge` folds the adapter into the weights (a plain model again).
    """
    import torch

    from finetune.quiet import quiet_library_noise

    quiet_library_noise()
    final = final_dir(path)
    adapter = is_adapter_dir(final)
    base_path = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] if adapter else None
    # An adapter's tokenizer says how many embedding rows its base needs; a whole model needs none.
    tokenizer = _tokenizer(final, base_path, trust_remote_code) if with_tokenizer or adapter else None
    chosen = model_kind(kind) if kind else adapter_kind(final) if adapter else saved_kind(final)
    if kind is None and adapter and chosen.name == "causal_lm":  # a CAUSAL_LM adapter on a vision-language base
        chosen = kind_of_config(_config_dict(base_path or final, trust_remote_code))
    kwargs: dict[str, Any] = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype),
                              "trust_remote_code": trust_remote_code}
    if not adapter:
        return _from_pretrained(chosen, final, kwargs), tokenizer
    # The base's config is the model it started from (a causal LM's, under a reward adapter): the
    # head size the adapter was trained with must be given.
    base = _from_pretrained(chosen, base_path, {**kwargs, **({"num_labels": num_labels} if num_labels else {})})
    return attach_adapter(base, final, vocab_size=len(tokenizer), merge=merge), tokenizer


def _config_dict(location: str | Path, trust_remote_code: bool) -> dict[str, Any]:
    """config.json of a local model directory or a cached Hub model ({} when it cannot be read: the
    loader that follows says why)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code).to_dict()
    except (OSError, ValueError):
        return {}


def _from_pretrained(kind: ModelKind, location: str | Path, kwargs: dict[str, Any]) -> Any:
    try:
        return kind.auto().from_pretrained(location, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        raise ModelLoadError(f"{location}: cannot load the model ({_first_line(err)})") from None


def _tokenizer(final: Path, base_path: str | None, trust_remote_code: bool) -> Any:
    """The tokenizer saved with the model; an adapter saved without one uses its base's."""
    from transformers import AutoTokenizer

    saved = any((final / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    location = final if saved or base_path is None else base_path
    try:
        return AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{location}: cannot load the tokenizer ({_first_line(err)})") from None


def attach_adapter(base: PreTrainedModel, adapter_dir: str | Path, *, vocab_size: int, merge: bool) -> Any:
    """`base` with the saved adapter on it (merged into the weights when `merge`): the one merge.

    The base must be unquantized: merging into dequantized 4-bit weights would bake the rounding
    error into the result. Rows for tokens a chat template added are created first; their trained
    values come from the adapter.
    """
    from peft import PeftModel

    if base.get_input_embeddings().weight.shape[0] < vocab_size:
        base.resize_token_embeddings(vocab_size, mean_resizing=False)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    return model.merge_and_unload() if merge else model


def merge_adapter(adapter_dir: str, out: Path) -> Path:
    """Write `adapter_dir`'s base with the adapter merged in to `out` (model + tokenizer), once.

    A LoRA run's final/ (SFT before DPO, PPO or GRPO, say) is not a model on its own. Loading it
    with the adapter attached and adding a new adapter would save the new one against the original
    base and silently drop the first run's training; merging in memory would leave the new adapter
    with a base that exists nowhere on disk. A merged directory is a plain model: every adapter kind
    (QLoRA too) trains on it, and the new adapter's saved config points at it.
    """
    from finetune.outputs import save_dir_atomic

    if (out / "config.json").is_file():
        return out  # merged by an earlier attempt of this run (resume)
    # Merged with the adapter's own head: an SFT (causal LM) adapter under a reward run is merged as a
    # causal LM, and the reward run then puts a fresh score head on the merged weights.
    merged, tokenizer = load_trained(adapter_dir, dtype="auto", merge=True)

    def save(tmp: Path) -> None:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        copy_image_processor(adapter_dir, tmp)

    save_dir_atomic(out, save)
    return out


def copy_image_processor(model_dir: str | Path, out: Path) -> None:
    """A vision-language model's preprocessor_config.json goes wherever its weights are written (a merged
    base, an export); a text model has none."""
    import shutil

    src = final_dir(model_dir) / "preprocessor_config.json"
    if src.is_file():
        shutil.copyfile(src, out / "preprocessor_config.json")


def _local_device(hardware: Hardware) -> Any:
    import os

    if hardware.device == "cuda":
        return int(os.environ.get("LOCAL_RANK", 0))
    return "cpu"
