"""Counts what every Hugging Face Trainer feeds the model, in any tool's process (ft, TRL, LLaMA-Factory).

benchmarks/peers.py puts benchmarks/_probe/ on PYTHONPATH, whose sitecustomize.py imports this
module; it patches transformers.Trainer so that, per training step, the token slots (padded
shape), the real tokens (attention mask, or every slot in a padding-free row) and the supervised
tokens (labels != -100) are counted, and writes them with the train runtime and the last logged
loss to $PEERS_STATS when training ends. The same counting for every tool, so the numbers compare.
"""

from __future__ import annotations

import json
import os


def install() -> None:
    import transformers

    trainer_cls = transformers.Trainer
    counts = {"steps": 0, "slots": 0, "real": 0, "supervised": 0}
    original_step, original_train = trainer_cls.training_step, trainer_cls.train

    def training_step(self, model, inputs, *args, **kwargs):  # type: ignore[no-untyped-def]
        ids = inputs["input_ids"]
        counts["steps"] += 1
        counts["slots"] += int(ids.numel())
        mask = inputs.get("attention_mask")
        counts["real"] += int(mask.sum()) if mask is not None and mask.dim() == 2 else int(ids.numel())
        labels = inputs.get("labels")
        if labels is not None:
            counts["supervised"] += int((labels[..., 1:] != -100).sum())
        return original_step(self, model, inputs, *args, **kwargs)

    def train(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        output = original_train(self, *args, **kwargs)
        losses = [e["loss"] for e in self.state.log_history if "loss" in e]
        record = {**counts, "train_runtime": output.metrics.get("train_runtime"),
                  "final_loss": losses[-1] if losses else None}
        with open(os.environ["PEERS_STATS"], "w", encoding="utf-8") as f:
            json.dump(record, f)
        return output

    trainer_cls.training_step, trainer_cls.train = training_step, train


if os.environ.get("PEERS_STATS"):
    install()
