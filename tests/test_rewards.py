"""The built-in reward functions give exact values; reward specs validate strictly; user code and
reward models load the ways a recipe can name them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from align.rewards import (
    NamedReward,
    RewardSpec,
    builtin_reward,
    completion_text,
    exact_match,
    length,
    load_custom,
    load_score_model,
    normalize_answer,
    regex,
)
from finetune.errors import ConfigError

SPEC = TypeAdapter(RewardSpec)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# ------------------------------------------------------------------------------ exact_match
def test_exact_match_equals_after_normalisation() -> None:
    completions = ["5", " 5. ", "The answer is 5", "15", "FIVE", chat("5")]
    assert exact_match(completions, ["5"] * 5 + ["5"]) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert exact_match(["Paris", "paris!"], ["Paris", "Paris"], normalize=False) == [1.0, 0.0]
    assert normalize_answer("  The   Answer:  5!  ") == "the answer: 5"


def test_exact_match_contains_whole_words_only() -> None:
    completions = ["The answer is 5.", "15", "5th", "it is 5, I think", chat("so: 5")]
    assert exact_match(completions, ["5"] * 5, mode="contains") == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert exact_match(["x+1 = y"], ["x+1"], mode="contains") == [1.0]  # the reference is literal, not a regex


def test_exact_match_without_a_reference() -> None:
    assert exact_match(["5", "6"], ["5", None]) == [1.0, None]  # None: TRL leaves it out of the sum
    with pytest.raises(ValueError, match="reference"):
        exact_match(["5"], None)


# ------------------------------------------------------------------------------------ regex
def test_regex_search_and_full_match() -> None:
    completions = ["42", "answer: 42", "no number", chat("<think>x</think>7")]
    assert regex(completions, pattern=r"\d+") == [1.0, 1.0, 0.0, 1.0]
    assert regex(completions, pattern=r"\d+", full_match=True) == [1.0, 0.0, 0.0, 0.0]
    assert regex(completions, pattern=r"(?s)^<think>.*</think>\d$") == [0.0, 0.0, 0.0, 1.0]


# ----------------------------------------------------------------------------------- length
def test_length_penalty_and_closeness_in_tokens() -> None:
    ids = [[1, 2, 3], [1] * 5, [1] * 8]
    texts = ["a", "b", "c"]
    assert length(texts, ids, target=5, per_unit=0.5) == [0.0, 0.0, -1.5]
    assert length(texts, ids, target=5, per_unit=0.5, mode="closeness") == [-1.0, 0.0, -1.5]
    with pytest.raises(ValueError, match="completion_ids"):
        length(texts, None, target=5)


def test_length_in_characters() -> None:
    completions = ["abc", "abcdef", chat("abcdefghij")]
    assert length(completions, target=6, per_unit=0.25, unit="characters") == [0.0, 0.0, -1.0]
    assert length(completions, target=6, per_unit=0.25, unit="characters", mode="closeness") == [-0.75, 0.0, -1.0]


def test_completion_text_of_messages_and_content_blocks() -> None:
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "ab"
    blocks = [{"role": "assistant", "content": [{"type": "text", "text": "hi"}, {"type": "image"}]}]
    assert completion_text(blocks) == "hi"


# ------------------------------------------------------------------------------ spec -> callable
def test_builtin_specs_become_named_callables_with_trl_keywords() -> None:
    from trl.trainer.utils import get_callable_name

    spec = SPEC.validate_python({"kind": "exact_match", "column": "answer", "mode": "contains"})
    fn = builtin_reward(spec, "exact_match_2")
    assert get_callable_name(fn) == "exact_match_2"  # the name TRL logs rewards/<name>/mean under
    kwargs = {"prompts": ["q", "q"], "completion_ids": [[1], [2]], "trainer_state": None, "reference": ["x", "x"]}
    assert fn(completions=["it is 7", "8"], answer=["7", "7"], **kwargs) == [1.0, 0.0]
    fn = builtin_reward(SPEC.validate_python({"kind": "length", "target": 1, "per_unit": 1.0}), "length")
    assert fn(prompts=["q"], completions=["ab"], completion_ids=[[5, 6, 7]]) == [-2.0]
    assert isinstance(builtin_reward(SPEC.validate_python({"kind": "regex", "pattern": "a"}), "regex"), NamedReward)


@pytest.mark.parametrize(("raw", "message"), [
    ({"kind": "regex", "pattern": "(unclosed"}, "not a valid regular expression"),
    ({"kind": "regex", "pattern": "a", "target": 3}, "Extra inputs are not permitted"),
    ({"kind": "length"}, "target"),
    ({"kind": "length", "target": 4, "per_unit": 0}, "greater than 0"),
    ({"kind": "exact_match", "mode": "fuzzy"}, "'equals' or 'contains'"),
    ({"kind": "custom", "function": "no_colon"}, "package.module:function"),
    ({"kind": "bleu"}, "does not match any of the expected tags"),
])
def test_specs_validate_strictly(raw: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SPEC.validate_python(raw)


# -------------------------------------------------------------------------------- user code
def test_load_custom_from_a_file_and_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "scorers.py").write_text("def short(completions, **kw):\n    return [1.0 for _ in completions]\n")
    assert load_custom(f"{tmp_path / 'scorers.py'}:short", "here")(completions=["a"]) == [1.0]
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_custom("scorers:short", "here")(completions=["a", "b"]) == [1.0, 1.0]
    with pytest.raises(ConfigError, match="here: 'scorers' has no function 'long'"):
        load_custom("scorers:long", "here")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        load_custom("no_such_module:f", "here")
    with pytest.raises(ConfigError, match="file not found"):
        load_custom(f"{tmp_path / 'missing.py'}:f", "here")


# ---------------------------------------------------------------------------- reward models
@pytest.fixture(scope="module")
def classifier_config(tiny_models: dict[str, Path]) -> object:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_models["llama"])
    config.num_labels = 1
    return config


def test_load_score_model_full_and_adapter(classifier_config: object, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    full = AutoModelForSequenceClassification.from_config(classifier_config)
    full.save_pretrained(tmp_path / "full")
    assert load_score_model(str(tmp_path / "full"), "here").config.num_labels == 1
    # A LoRA reward adapter is merged into its base: PPO reads the plain backbone and score head.
    peft = get_peft_model(full, LoraConfig(r=2, target_modules=["q_proj"], task_type="SEQ_CLS", init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[5, 6, 7]])
    merged = load_score_model(str(tmp_path / "adapter"), "here")
    assert type(merged).__name__ == "LlamaForSequenceClassification"
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, peft.eval()(input_ids=ids).logits, atol=1e-5)


def test_load_score_model_errors(classifier_config: object, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    two = classifier_config.__class__.from_dict(classifier_config.to_dict())
    two.num_labels = 2  # the setter rebuilds id2label, on every transformers 5.x
    AutoModelForSequenceClassification.from_config(two).save_pretrained(tmp_path / "two")
    with pytest.raises(ConfigError, match="objective.reward_model: .* has 2 outputs"):
        load_score_model(str(tmp_path / "two"), "objective.reward_model")
    with pytest.raises(ConfigError, match="cannot load a sequence-classification model"):
        load_score_model(str(tmp_path / "nothing-here"), "objective.reward_model")
