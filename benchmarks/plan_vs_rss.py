"""Compare `ft plan`'s estimate with the measured peak RSS increase of one real training step on CPU.

Run: python benchmarks/plan_vs_rss.py [full|lora]   (prints one JSON line; results in benchmarks/plan_vs_rss.md)
A random Llama of ~45M parameters (large enough that allocator noise is small against it) trains one
step in float32 with torch AdamW: forward, loss, backward, optimizer step, twice (the
second is the steady state). The peak resident set
(VmHWM) minus the resident set before the model was built is compared with the plan's total for the
same setup (no GPU overhead term).
"""

from __future__ import annotations

import json
import sys

CONFIG = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1408,
          "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64,
          "tie_word_embeddings": False, "max_position_embeddings": 512}
SEQ, BATCH = 256, 4


def _rss(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(l for l in status if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def measure(mode: str) -> dict[str, float]:
    import torch
    from peft import LoraConfig, get_peft_model  # imported before the baseline: importing costs resident memory
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(1)
    # Warm up kernels and lazily initialised libraries on a throwaway model so they are not counted.
    small = LlamaForCausalLM(LlamaConfig(**{**CONFIG, "vocab_size": 64, "hidden_size": 64, "intermediate_size": 64,
                                            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32}))
    ids = torch.randint(0, 64, (1, 8))
    small(input_ids=ids, labels=ids).loss.backward()
    torch.optim.AdamW(small.parameters()).step()
    del small
    base = _rss("VmRSS")
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    if mode == "lora":
        model = get_peft_model(model, LoraConfig(r=16, target_modules="all-linear", lora_dropout=0.05))
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, CONFIG["vocab_size"], (BATCH, SEQ))
    for _ in range(2):  # the second step is the steady state: optimizer states exist, gradients are rebuilt
        model(input_ids=ids, labels=ids).loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
    measured = _rss("VmHWM") - base

    from finetune.plan import architecture
    from finetune.plan_memory import Setup, estimate

    setup = Setup(adapter="none" if mode == "full" else "lora", r=16, dtype="float32", seq=SEQ, batch=BATCH)
    planned = estimate(architecture(CONFIG), setup).total
    return {"mode": mode, "planned_mib": planned / 2**20, "measured_mib": measured / 2**20,
            "error": (planned - measured) / measured}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1] if len(sys.argv) > 1 else "full")))
