"""Run under torchrun by test_distributed.py: train a recipe and record, per rank, which examples
the rank's model saw and a digest of its final weights."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetune.pipeline import run
from finetune.recipe.loader import load_recipe


class SeenAndDigest(TrainerCallback):
    def __init__(self, out: Path, pad_id: int) -> None:
        self.out, self.pad_id, self.seen = out, pad_id, []

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        def record(_module: Any, inputs: tuple[Any, ...]) -> None:
            if model.training:
                for row in inputs[0].tolist():
                    self.seen.append([t for t in row if t != self.pad_id])

        model.get_input_embeddings().register_forward_pre_hook(record)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        digest = hashlib.sha256()
        for name, param in sorted(model.named_parameters()):
            digest.update(name.encode() + param.detach().cpu().numpy().tobytes())
        rank = int(os.environ["RANK"])
        record = {"rank": rank, "world_size": int(os.environ["WORLD_SIZE"]), "seen": self.seen,
                  "digest": digest.hexdigest()}
        (self.out / f"rank{rank}.json").write_text(json.dumps(record))


def main() -> None:
    recipe_path, out, pad_id = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    run(load_recipe(recipe_path, sys.argv[4:]), callbacks=[SeenAndDigest(out, pad_id)])


if __name__ == "__main__":
    main()
