"""Every shipped recipe runs as its header says, with only the model pointed at a local one (here
the shipped tiny chat model, a tiny encoder for the encoder-only mlm, or a tiny T5 for seq2seq) — plus a temporary
output_dir and a short run to keep the suite fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.pipeline import run
from finetune.recipe.loader import load_recipe
from finetune.tiny import build_tiny_encoder, build_wordpiece_tokenizer
from finetune.tiny_seq2seq import build_seq2seq_tokenizer, build_tiny_seq2seq
from finetune.tiny_vlm import build_tiny_vlm
from tests._runs import ROOT, TEXT_DATA

RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml") if not p.stem.startswith("pipeline_"))
LOCAL_MODEL = "model.name_or_path=examples/models/tiny-chat"
ENCODER_ONLY = ("mlm",)  # a decoder is refused by these objectives: they run on a tiny BERT
ENCODER_DECODER = ("seq2seq_lora",)  # these run on a tiny T5
VISION = ("vlm_sft",)  # image-text recipes run on a tiny Qwen2-VL


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    tokenizer = build_wordpiece_tokenizer(TEXT_DATA.read_text().splitlines())
    return f"model.name_or_path={build_tiny_encoder(tokenizer, tmp_path_factory.mktemp('bert') / 'bert')}"


@pytest.fixture(scope="module")
def encoder_decoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    tokenizer = build_seq2seq_tokenizer((ROOT / "examples" / "data" / "seq2seq.jsonl").read_text().splitlines(), "t5")
    return f"model.name_or_path={build_tiny_seq2seq('t5', tokenizer, tmp_path_factory.mktemp('t5') / 't5')}"


def _run(name: str, out: Path, *extra: str, model: str = LOCAL_MODEL) -> Path:
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml",
                         [model, f"output_dir={out}", "training.max_steps=2", *extra])
    return run(recipe, log=lambda *_: None).run_dir


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"model.name_or_path={build_tiny_vlm(tmp_path_factory.mktemp('vlm') / 'qwen2-vl')}"


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run("reward", tmp_path_factory.mktemp("reward") / "run")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_with_a_local_model(name: str, reward_run: Path, encoder: str, encoder_decoder: str, vlm: str,
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # recipes name their data relative to the repository root
    # ppo reads the reward model a reward run wrote (its header: "First: ft run recipes/reward.yaml").
    extra = [f"objective.reward_model={reward_run / 'final'}"] if name == "ppo" else []
    model = (encoder if name in ENCODER_ONLY else encoder_decoder if name in ENCODER_DECODER
             else vlm if name in VISION else LOCAL_MODEL)
    run_dir = reward_run if name == "reward" else _run(name, tmp_path / "run", *extra, model=model)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["objective"] == load_recipe(ROOT / "recipes" / f"{name}.yaml", [model]).objective.kind
    assert (run_dir / "final").is_dir() and (run_dir / "metrics.jsonl").read_text().strip()
