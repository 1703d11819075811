"""`merged`: the adapter folded into its unquantized base, saved as a plain transformers model.

This is what vLLM, LMDeploy, TGI, SGLang and transformers load. Its generation_config.json lists
every end-of-turn token of the chat template as an eos id: without it a server never stops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_templates.chat_templates import end_of_turn_ids
from finetune.export.common import ExportError, run_recipe

DTYPES = ("float16", "bfloat16", "float32")


def default_dtype(run_dir: Path) -> str:
    """The training dtype from the run's recipe; float16 for a 4-bit QLoRA base (its dtype is not one)."""
    recipe = run_recipe(run_dir)
    if (recipe.get("adapter") or {}).get("kind") == "qlora":
        return "float16"
    dtype = (recipe.get("model") or {}).get("dtype", "auto")
    if dtype in DTYPES:
        return dtype
    precision = {"bf16": "bfloat16", "fp16": "float16"}.get((recipe.get("training") or {}).get("precision", ""))
    return precision or "float32"


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    return dtype


def load_merged(run_dir: Path, dtype: str) -> tuple[Any, Any]:
    """The run's model with any adapter merged in (QLoRA: on the base reloaded unquantized)."""
    from finetune.models import load_trained
    from finetune.registry import get_objective

    # A reward run's final/ is a sequence classifier; the objective says which head to load.
    kind = (run_recipe(run_dir).get("objective") or {}).get("kind")
    head = get_objective(kind).model_head if kind else None
    return load_trained(run_dir, kind=head, dtype=check_dtype(dtype), merge=True)


def save_merged(model: Any, tokenizer: Any, out: Path, max_shard_size: str = "5GB") -> None:
    """Weights (sharded safetensors), config, tokenizer, chat_template.jinja, generation_config.json."""
    from transformers import GenerationConfig

    model.save_pretrained(out, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and not (out / "chat_template.jinja").is_file():
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    if not getattr(model, "can_generate", lambda: False)():
        return  # a reward model scores, it does not generate
    gen = model.generation_config if model.generation_config is not None else GenerationConfig()
    gen.eos_token_id = end_of_turn_ids(tokenizer)
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    gen.save_pretrained(out)


def export_merged(run_dir: Path, out: Path, dtype: str | None = None) -> None:
    """Fill `out` (a fresh temporary folder) with the merged model."""
    from finetune.models import copy_image_processor

    model, tokenizer = load_merged(run_dir, dtype or default_dtype(run_dir))
    save_merged(model, tokenizer, out)
    copy_image_processor(run_dir, out)  # a vision-language model's image processor


def transformers_command(model_dir: Path, written: Path | None = None) -> str:
    """A one-line check that the export in `model_dir` loads and answers (`written`: where its files
    are now, before they move there). transformers 5 has no pipeline for encoder-decoders
    (text2text-generation is gone): those load with their Auto class and generate from the prompt."""
    from finetune.models import saved_kind

    kind = saved_kind(written or model_dir)
    if not kind.encoder_decoder:
        return (f"python -c \"from transformers import pipeline; "
                f"print(pipeline('text-generation', model='{model_dir}')([{{'role': 'user', 'content': 'Hello'}}]))\"")
    auto = kind.auto_class.partition(":")[2]
    return (f"python -c \"from transformers import AutoTokenizer, {auto}; t = AutoTokenizer.from_pretrained('{model_dir}'); "
            f"m = {auto}.from_pretrained('{model_dir}'); "
            f"print(t.decode(m.generate(**t('Hello', return_tensors='pt'))[0], skip_special_tokens=True))\"")
