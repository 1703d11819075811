"""The numbers `ft eval` reports, each a small function over a model and canonical rows.

Loss and perplexity use exactly the training masks (the tokenized dataset's labels); generation
metrics compare greedy answers with references; preference metrics compare summed log-probs of
the chosen and rejected completions (DPO) or the reward model's scores.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any


def token_nll(model: Any, input_ids: list[int], labels: list[int]) -> tuple[float, int]:
    """(summed negative log-likelihood, trained tokens) of one example, with the causal shift."""
    import torch

    ids = torch.tensor([input_ids], device=model.device)
    target = torch.tensor([labels], device=model.device)[:, 1:]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
    mask = target != -100
    if not mask.any():
        return 0.0, 0
    logp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return float(-(logp * mask).sum()), int(mask.sum())


def loss_metrics(model: Any, dataset: Any) -> dict[str, float]:
    """Mean token loss over every trained token of the dataset, and its exponential."""
    total, tokens = 0.0, 0
    for example in dataset:
        nll, count = token_nll(model, example["input_ids"], example["labels"])
        total, tokens = total + nll, tokens + count
    loss = total / tokens if tokens else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if tokens else float("nan"), "tokens": tokens,
            "examples": len(dataset)}


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 over lower-cased word tokens."""
    pred, ref = _words(prediction), _words(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def generation_metrics(model: Any, tokenizer: Any, pairs: list[tuple[Any, str]],
                       max_new_tokens: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Greedy answers to each prompt against its reference: exact match, token F1, mean length (tokens)."""
    from finetune.generate import generate

    outputs = []
    for prompt, reference in pairs:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        answer = generate(model, tokenizer, messages, max_new_tokens)
        outputs.append({"prompt": prompt, "reference": reference, "output": answer,
                        "exact_match": answer.strip() == reference.strip(), "token_f1": token_f1(answer, reference)})
    n = len(outputs)
    lengths = [len(tokenizer(o["output"], add_special_tokens=False)["input_ids"]) for o in outputs]
    metrics = {"exact_match": sum(o["exact_match"] for o in outputs) / n,
               "token_f1": sum(o["token_f1"] for o in outputs) / n, "mean_length": sum(lengths) / n,
               "generated": n}
    return metrics, outputs


def completion_logprob(model: Any, tokenizer: Any, prompt: Any, completion: Any) -> tuple[float, int]:
    """Summed log-prob of the completion's trained tokens given the prompt (the DPO masks)."""
    from data_templates.masking import tokenize_prompt_completion

    tokens = tokenize_prompt_completion(tokenizer, prompt, completion, completion_only=True)
    nll, count = token_nll(model, tokens["input_ids"], tokens["labels"])
    return -nll, count


def preference_metrics(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Share of pairs whose chosen completion has the higher summed log-prob; loss on chosen tokens."""
    wins, margins, nll, tokens = 0, [], 0.0, 0
    for row in rows:
        chosen, count = completion_logprob(model, tokenizer, row["prompt"], row["chosen"])
        rejected, _ = completion_logprob(model, tokenizer, row["prompt"], row["rejected"])
        wins += chosen > rejected
        margins.append(chosen - rejected)
        nll, tokens = nll - chosen, tokens + count
    loss = nll / tokens if tokens else float("nan")
    return {"preference_accuracy": wins / len(rows), "mean_margin": sum(margins) / len(rows),
            "loss": loss, "perplexity": math.exp(loss) if tokens else float("nan"), "tokens": tokens,
            "examples": len(rows)}


def _score(model: Any, tokenizer: Any, prompt: Any, completion: Any) -> float:
    import torch

    from data_templates.masking import tokenize_prompt_completion

    ids = tokenize_prompt_completion(tokenizer, prompt, completion, completion_only=False)["input_ids"]
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids], device=model.device)).logits[0, 0])


def reward_metrics(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> dict[str, float]:
    """A reward model's accuracy: share of pairs where it scores chosen above rejected."""
    margins = [_score(model, tokenizer, r["prompt"], r["chosen"]) - _score(model, tokenizer, r["prompt"], r["rejected"])
               for r in rows]
    return {"reward_accuracy": sum(m > 0 for m in margins) / len(rows), "mean_margin": sum(margins) / len(rows),
            "examples": len(rows)}
