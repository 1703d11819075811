"""Build examples/models/tiny-chat/, the randomly initialised model the quickstart fine-tunes.

    python examples/build_tiny_model.py            # rebuilds examples/models/tiny-chat/
    python examples/build_tiny_model.py --out-dir /tmp/tiny-chat

The output is committed so the quickstart works from a fresh clone with no network; this script
is how it was made, and rebuilding gives the same weights. The model knows nothing: its tokenizer
is trained on the quickstart data plus a little English, and its weights are random, so anything
it says after the quickstart was learned in the quickstart.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from data_templates.chat_templates import get_template
from finetune.tiny import build_tiny_model, build_tokenizer

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "quickstart.jsonl"
OUT_DIR = HERE / "models" / "tiny-chat"

# A little ordinary English, so the tokenizer has common words and punctuation beyond the
# quickstart's ten conversations and tokenizes a user's own prompts into sensible pieces.
GENERIC_TEXT = """\
The weather was cold this morning, but the afternoon was warm and bright.
She opened the window, sat down at the table and read the letter twice.
How are you today? I am fine, thank you. What would you like to do next?
Numbers such as 1, 2, 3, 10, 42 and 2024 appear in many sentences.
A good answer is short, clear and correct. Please explain your reasoning.
They walked to the station, bought two tickets and waited for the train.
Water boils at one hundred degrees Celsius at sea level.
The cat sleeps on the chair; the dog sleeps by the door.
"""

def corpus(data_path: Path = DATA) -> list[str]:
    """Every message of the quickstart data, the role names, and the generic English."""
    texts = ["system", "user", "assistant"]
    with data_path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.extend(m["content"] for m in json.loads(line)["messages"])
    texts.extend(GENERIC_TEXT.splitlines())
    return texts


def build(
    out_dir: Path = OUT_DIR,
    *,
    vocab_size: int = 768,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    initializer_range: float = 0.1,
    seed: int = 0,
) -> Path:
    """Train the tokenizer, build the random Llama, save both to `out_dir`.

    The defaults are what examples/quickstart_experiment.py found: about 2 MB, and LoRA learns
    all ten replies in about 100 steps (a few seconds on two CPU cores). The corpus runs out of
    merges at about 700 tokens, so vocab_size is a ceiling. initializer_range is 0.1, not the
    usual 0.02, because LoRA leaves the random output layer frozen: at 0.02 its logits are so
    small that the loss stalls near 4 even when every reply is right; at 0.1 it falls to ~0.04.
    """
    tokenizer = build_tokenizer(
        corpus(),
        vocab_size=vocab_size,
        chat_template=get_template("chatml").source,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        # A turn ends with <|im_end|>, so that is where generation must stop, as in Qwen's
        # instruct models; an eos of </s> would let the model ramble on into a new turn.
        eos_token="<|im_end|>",
    )
    return build_tiny_model(
        "llama",
        tokenizer,
        out_dir,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        initializer_range=initializer_range,
        seed=seed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help=f"where to save (default: {OUT_DIR})")
    args = parser.parse_args()
    out = build(args.out_dir)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"saved {out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
