"""Load the tokenizer and the base model named by a recipe, full precision or 4-bit."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.errors import FtError
from finetune.hardware import Hardware, resolve_dtype
from finetune.recipe.schema import ModelSection, QLoraAdapter

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class ModelNotFoundError(FtError):
    """The model or tokenizer could not be found locally nor fetched from the Hub."""


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
        # directly) and a reward model's score head, which is trained.
        llm_int8_skip_modules=["lm_head", "score", "classifier"],
        # FSDP shards units of one dtype: under FSDP the 4-bit weights are stored in the compute dtype
        # (the default uint8 storage cannot be sharded with the LoRA weights); same bytes, packed.
        bnb_4bit_quant_storage=getattr(torch, compute) if for_fsdp else torch.uint8,
    )


def load_model(section: ModelSection, adapter: Any, hardware: Hardware, head: str = "causal_lm",
               num_labels: int | None = None, for_fsdp: bool = False) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    classes = {"causal_lm": AutoModelForCausalLM, "sequence_classification": AutoModelForSequenceClassification}
    kwargs: dict[str, Any] = {**_hub_kwargs(section), "dtype": getattr(torch, resolve_dtype(section.dtype, hardware))}
    if section.attn_implementation:
        kwargs["attn_implementation"] = section.attn_implementation
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    quant = quantization_config(adapter, hardware, for_fsdp)
    if quant is not None:
        kwargs["quantization_config"] = quant
        # bitsandbytes quantizes while loading onto the target device.
        kwargs["device_map"] = {"": _local_device(hardware)}
    location = model_location(section)
    if is_adapter_dir(location):
        raise ValueError(f"{location} is an adapter; merge it first (finetune.models.merge_adapter)")
    try:
        return classes[head].from_pretrained(location, **kwargs)
    except OSError as err:
        raise _not_found(section, "weights", err) from None


def is_adapter_dir(location: str) -> bool:
    return (Path(location) / "adapter_config.json").is_file()


def merge_adapter(adapter_dir: str, out: Path) -> Path:
    """Write `adapter_dir`'s base with the adapter merged in to `out` (model + tokenizer), once.

    A LoRA run's final/ (SFT before DPO, PPO or GRPO, say) is not a model on its own. Loading it
    with the adapter attached and adding a new adapter would save the new one against the original
    base and silently drop the first run's training; merging in memory would leave the new adapter
    with a base that exists nowhere on disk. A merged directory is a plain model: every adapter kind
    (QLoRA too) trains on it, and the new adapter's saved config points at it.
    """
    import json

    from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    from finetune.outputs import save_dir_atomic

    if (out / "config.json").is_file():
        return out  # merged by an earlier attempt of this run (resume)
    # Merge with the adapter's own head: an SFT (causal LM) adapter under a reward run is merged as a
    # causal LM, and the reward run then puts a fresh score head on the merged weights.
    task = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("task_type")
    auto = AutoPeftModelForSequenceClassification if task == "SEQ_CLS" else AutoPeftModelForCausalLM
    merged = auto.from_pretrained(adapter_dir, dtype="auto").merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)

    def save(tmp: Path) -> None:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    save_dir_atomic(out, save)
    return out


def _local_device(hardware: Hardware) -> Any:
    import os

    if hardware.device == "cuda":
        return int(os.environ.get("LOCAL_RANK", 0))
    return "cpu"
