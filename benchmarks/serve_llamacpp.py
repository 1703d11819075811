"""Serve ft's GGUF exports with llama.cpp (llama-cpp-python) and compare with transformers.

    pip install -e ".[gguf,llamacpp]"      # llama-cpp-python compiles llama.cpp (~16 CPU-minutes)
    python benchmarks/serve_llamacpp.py [--model DIR] [--types f32 f16 q8_0] [--tokens 24]

For each tiny test architecture (or the model directory given), ft writes the GGUF, llama.cpp
loads it and decodes greedily from a chat prompt, and the tokens are compared with transformers'
greedy decoding of the original model; the largest logit difference over the prompt is reported.
Kept out of the test run because it needs the compiled llama.cpp.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.export.gguf import write_gguf

PROMPT = [{"role": "user", "content": "What does a tokenizer do?"}]


def tiny_models(root: Path) -> dict[str, Path]:
    from data_templates.chat_templates import get_template
    from finetune.tiny import build_tiny_model, build_tokenizer
    from tests.conftest import _corpus

    tok = build_tokenizer(_corpus(), chat_template=get_template("chatml").source, eos_token="<|im_end|>",
                          special_tokens=["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    archs = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3"]
    return {a: build_tiny_model(a, tok, root / f"model-{a}", initializer_range=0.1) for a in archs}


def compare(model_dir: Path, gguf_type: str, tokens: int, out: Path) -> dict[str, object]:
    import llama_cpp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = write_gguf(model_dir, out / f"{model_dir.name}-{gguf_type}.gguf", gguf_type, name="ft-benchmark")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompt = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    ids = tok.encode(prompt, add_special_tokens=False)
    with torch.no_grad():
        expected = model.generate(torch.tensor([ids]), max_new_tokens=tokens, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)[0, len(ids):].tolist()
        reference = model(torch.tensor([ids])).logits[0].numpy()
    llm = llama_cpp.Llama(str(result.path), n_ctx=512, verbose=False, logits_all=True)
    try:
        same_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
        llm.eval(ids)
        diff = float(np.abs(np.asarray(llm.scores[: len(ids)]) - reference).max())
        got = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            got.append(int(token))
            if len(got) == tokens:
                break
    finally:
        llm.close()
    return {"model": model_dir.name, "type": gguf_type, "arch": result.architecture, "same_prompt_ids": same_ids,
            "greedy_equal": got == expected, "max_logit_diff": diff, "logit_scale": float(np.abs(reference).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a transformers model directory (default: the tiny models)")
    parser.add_argument("--types", nargs="+", default=["f32", "f16", "q8_0"])
    parser.add_argument("--tokens", type=int, default=24)
    args = parser.parse_args()
    import llama_cpp

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = {args.model.name: args.model} if args.model else tiny_models(root)
        print(f"llama-cpp-python {llama_cpp.__version__}")
        print("| model | GGUF arch | type | prompt ids equal | greedy tokens equal | max logit diff (scale) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for model_dir in models.values():
            for gguf_type in args.types:
                r = compare(model_dir, gguf_type, args.tokens, root)
                print(f"| {r['model']} | {r['arch']} | {r['type']} | {r['same_prompt_ids']} | {r['greedy_equal']} "
                      f"| {r['max_logit_diff']:.2e} ({r['logit_scale']:.2f}) |")


if __name__ == "__main__":
    main()
