"""The tests' tiny offline world: three tiny models, a chat and a text data set, no network.

The environment is set here, at import time, because pytest imports this file before any test
module, and the Hugging Face libraries read these variables when they are first imported.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Offline always: a test that would download something fails instead of quietly succeeding on a
# developer's machine. A private HF_HOME keeps tests out of the user's cache and vice versa.
_HF_HOME = tempfile.mkdtemp(prefix="ft-tests-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
_FT_CACHE = tempfile.mkdtemp(prefix="ft-tests-data-cache-")
atexit.register(shutil.rmtree, _FT_CACHE, ignore_errors=True)
os.environ.update(
    FT_CACHE=_FT_CACHE,  # tokenized-data cache: never the user's
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    HF_HOME=_HF_HOME,
    HF_HUB_DISABLE_TELEMETRY="1",
)
# Tiny models are all overhead and no arithmetic. With one thread per op they lose ~25% when the
# machine is idle; with two threads on two cores they ran 10x slower (130 s against 13 s, measured)
# as soon as anything else wanted a core, because the threads spin waiting for each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402  (the environment above must be set before these imports)
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from data_templates.chat_templates import get_template  # noqa: E402
from finetune.tiny import build_tiny_model, build_tokenizer  # noqa: E402
from tests._tokenizers import QWEN25_TEMPLATE  # noqa: E402

# Shared fixtures of the alignment and data tests, registered for every test module.
pytest_plugins = ["tests._align_helpers", "tests._data", "tests._seq2seq"]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def notices() -> Iterator[list[str]]:
    """The notices (finetune.notices) sent to the user during the test."""
    from finetune.notices import notices_to

    seen: list[str] = []
    with notices_to(seen.append):
        yield seen
QUICKSTART_DATA = ROOT / "examples" / "data" / "quickstart.jsonl"

# Raw text for continued pretraining; also part of the tokenizer corpus.
TEXT_ROWS = [
    "Fine-tuning adapts a pretrained model to a new task with a little data.",
    "A tokenizer splits text into pieces that the model maps to vectors.",
    "The learning rate sets how far each step moves the weights.",
    "Low-rank adapters train two small matrices beside each frozen weight.",
    "Evaluation on held-out data tells you whether the model generalises.",
    "Checkpoints let a long run resume after an interruption.",
    "Mixed precision halves memory traffic on modern accelerators.",
    "Packing puts several short examples into one sequence.",
]


def _corpus() -> list[str]:
    """What every tiny tokenizer is trained on: the chat data, the text rows, the template words."""
    texts = ["system user assistant", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."]
    for line in QUICKSTART_DATA.read_text(encoding="utf-8").splitlines():
        texts.extend(m["content"] for m in json.loads(line)["messages"])
    return texts + TEXT_ROWS


def _llama(corpus: list[str], out: Path) -> Path:
    """A chat model like the quickstart's: ChatML template, turns and generation end at <|im_end|>."""
    chatml = get_template("chatml").source
    tok = build_tokenizer(corpus, chat_template=chatml, special_tokens=["<|im_start|>", "<|im_end|>"],
                          eos_token="<|im_end|>")
    return build_tiny_model("llama", tok, out)


def _qwen2(corpus: list[str], out: Path) -> Path:
    """Qwen2.5-Instruct's shape: its own template (default system prompt), no bos, pad <|endoftext|>."""
    tok = build_tokenizer(corpus, chat_template=QWEN25_TEMPLATE, bos_token=None, eos_token="<|im_end|>",
                          pad_token="<|endoftext|>", special_tokens=["<|im_start|>", "<|im_end|>"])
    return build_tiny_model("qwen2", tok, out)


def _mistral(corpus: list[str], out: Path) -> Path:
    """A base model like Mistral-7B-v0.1: no chat template, bos prepended on every encode, no pad."""
    tok = build_tokenizer(corpus, pad_token=None, add_bos_token=True)
    return build_tiny_model("mistral", tok, out)


TINY_MODELS: dict[str, Callable[[list[str], Path], Path]] = {
    "llama": _llama,
    "qwen2": _qwen2,
    "mistral": _mistral,
}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> directory of a saved tiny model and tokenizer; read-only for tests (shared)."""
    root = tmp_path_factory.mktemp("tiny-models")
    corpus = _corpus()
    return {name: build(corpus, root / name) for name, build in TINY_MODELS.items()}


@pytest.fixture(scope="session")
def tiny_chat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the quickstart conversations (messages format), so no test can edit the original."""
    path = tmp_path_factory.mktemp("data") / "chat.jsonl"
    shutil.copyfile(QUICKSTART_DATA, path)
    return path


@pytest.fixture(scope="session")
def tiny_text_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw text rows, one JSON object with a `text` field per line."""
    path = tmp_path_factory.mktemp("data") / "text.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXT_ROWS), encoding="utf-8")
    return path
