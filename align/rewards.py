"""Reward sources for online objectives: built-in reward functions, reward models, user code.

A GRPO recipe lists its rewards under `objective.rewards`, each a mapping with a `kind`:

- exact_match:  1.0 when the completion equals (or contains) the row's reference answer, else 0.0
- regex:        1.0 when the completion matches a pattern (a format check), else 0.0
- length:       a penalty per token (or character) beyond a target length, or for any distance to it
- reward_model: the scalar score of a sequence-classification model
- custom:       your own Python function, `module:function` or `path/to/file.py:function`; it runs
                code from outside the recipe, so the objective must opt in with `allow_custom_code`

Every reward function takes TRL's keyword arguments (`prompts`, `completions`, `completion_ids` and
the dataset's other columns, e.g. `reference`) and returns one float (or None: no opinion) per
completion. Completions are text, or message lists when the prompts were conversations.

Only pydantic is imported at module level: recipes validate without torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator

from finetune.errors import ConfigError
from finetune.recipe.schema import Strict

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Completion = str | list[dict[str, Any]]
RewardFn = Callable[..., list[float | None]]


# ------------------------------------------------------------------------------------- schema
class RewardSource(Strict):
    weight: float = Field(1.0, description="Weight of this reward in the weighted sum GRPO optimises.")


class ExactMatchReward(RewardSource):
    kind: Literal["exact_match"] = "exact_match"
    mode: Literal["equals", "contains"] = Field(
        "equals", description="equals: the whole completion is the reference; contains: the reference appears in "
        "it as a whole word or number (so '5' is not found in '15').")
    normalize: bool = Field(
        True, description="Compare case-folded, with runs of whitespace collapsed and surrounding punctuation removed.")
    column: str = Field("reference", description="The dataset column holding the reference answer.")


class RegexReward(RewardSource):
    kind: Literal["regex"] = "regex"
    pattern: str = Field(description="Python regular expression; inline flags such as (?s) or (?i) work.")
    full_match: bool = Field(False, description="The whole completion must match, not just a part of it.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"not a valid regular expression: {err}") from None
        return pattern


class LengthReward(RewardSource):
    kind: Literal["length"] = "length"
    target: int = Field(ge=0, description="Target completion length, in `unit`s.")
    mode: Literal["penalty", "closeness"] = Field(
        "penalty", description="penalty: -per_unit for each unit beyond target (0 at or under it); "
        "closeness: -per_unit for each unit away from target, either side.")
    per_unit: float = Field(0.01, gt=0, description="Reward lost per unit of excess (or distance).")
    unit: Literal["tokens", "characters"] = Field(
        "tokens", description="tokens: generated tokens, the end-of-sequence token included; characters: of the text.")


class RewardModelReward(RewardSource):
    kind: Literal["reward_model"] = "reward_model"
    path: str = Field(description="A sequence-classification model with one output (a `reward` run's final/, "
                                  "a Hub id or a local directory); its own tokenizer and chat template are used.")


class CustomReward(RewardSource):
    kind: Literal["custom"] = "custom"
    function: str = Field(
        description="`package.module:function` (importable) or `path/to/file.py:function` (relative to the working "
        "directory). Needs `allow_custom_code: true` in the objective.")

    @field_validator("function")
    @classmethod
    def _names_a_function(cls, function: str) -> str:
        if not re.fullmatch(r"[^:]+:[A-Za-z_]\w*", function):
            raise ValueError(f"expected package.module:function or path/to/file.py:function, got {function!r}")
        return function


RewardSpec = Annotated[
    ExactMatchReward | RegexReward | LengthReward | RewardModelReward | CustomReward,
    Field(discriminator="kind"),
]


# ---------------------------------------------------------------------------- built-in rewards
def completion_text(completion: Completion) -> str:
    """The text of a completion: itself, or the content of its (assistant) messages."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        content = message.get("content") or ""
        if isinstance(content, list):  # content blocks: keep the text ones
            content = "".join(block.get("text", "") for block in content if block.get("type") == "text")
        parts.append(content)
    return "".join(parts)


def normalize_answer(text: str) -> str:
    """Case-folded, whitespace collapsed, surrounding punctuation and spaces stripped."""
    return " ".join(text.casefold().split()).strip(string.punctuation + " ")


def exact_match(completions: Sequence[Completion], reference: Sequence[str | None] | None, *,
                mode: str = "equals", normalize: bool = True, **_: Any) -> list[float | None]:
    """1.0 where the completion equals (or contains) its reference, 0.0 where not, None without one."""
    if reference is None:
        raise ValueError("exact_match needs a reference answer per row (a `reference` column)")
    scores: list[float | None] = []
    for completion, ref in zip(completions, reference, strict=True):
        if ref is None:
            scores.append(None)  # TRL leaves a None out of the weighted sum
            continue
        text, ref = completion_text(completion), str(ref)
        if normalize:
            text, ref = normalize_answer(text), normalize_answer(ref)
        if mode == "equals":
            hit = text == ref
        else:
            # Whole-word containment: "5" must not be found inside "15" or "5th".
            hit = bool(ref) and re.search(rf"(?<!\w){re.escape(ref)}(?!\w)", text) is not None
        scores.append(1.0 if hit else 0.0)
    return scores


def regex(completions: Sequence[Completion], *, pattern: str, full_match: bool = False, **_: Any) -> list[float]:
    """1.0 where the completion matches `pattern` (anywhere, or as a whole), else 0.0."""
    compiled = re.compile(pattern)
    match = compiled.fullmatch if full_match else compiled.search
    return [1.0 if match(completion_text(c)) else 0.0 for c in completions]


def length(completions: Sequence[Completion], completion_ids: Sequence[Sequence[int]] | None = None, *,
           target: int, mode: str = "penalty", per_unit: float = 0.01, unit: str = "tokens",
           **_: Any) -> list[float]:
    """-per_unit per unit beyond `target` (penalty) or per unit away from it (closeness)."""
    if unit == "tokens":
        if completion_ids is None:
            raise ValueError("length with unit=tokens needs completion_ids")
        sizes = [len(ids) for ids in completion_ids]
    else:
        sizes = [len(completion_text(c)) for c in completions]
    if mode == "penalty":
        return [-per_unit * max(0, n - target) for n in sizes]
    return [-per_unit * abs(n - target) for n in sizes]


class NamedReward:
    """A reward callable with the name TRL logs it under (`rewards/<name>/mean`)."""

    def __init__(self, name: str, fn: RewardFn) -> None:
        self.__name__ = name
        self.fn = fn

    def __call__(self, **kwargs: Any) -> list[float | None]:
        return self.fn(**kwargs)

    def __repr__(self) -> str:
        return f"NamedReward({self.__name__!r})"


def builtin_reward(spec: ExactMatchReward | RegexReward | LengthReward, name: str) -> NamedReward:
    """The callable for a built-in reward spec."""
    if isinstance(spec, ExactMatchReward):
        return NamedReward(name, lambda completions, **kw: exact_match(
            completions, kw.get(spec.column), mode=spec.mode, normalize=spec.normalize))
    if isinstance(spec, RegexReward):
        return NamedReward(name, lambda completions, **kw: regex(
            completions, pattern=spec.pattern, full_match=spec.full_match))
    return NamedReward(name, lambda completions, completion_ids=None, **kw: length(
        completions, completion_ids, target=spec.target, mode=spec.mode, per_unit=spec.per_unit, unit=spec.unit))


# ------------------------------------------------------------------------------- user code
def load_custom(function: str, where: str) -> RewardFn:
    """Import `module:function` or `file.py:function`; `where` names the recipe key in errors."""
    target, _, name = function.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"{where}: file not found: {path}")
            spec = importlib.util.spec_from_file_location(f"ft_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(target)
    except ImportError as err:
        raise ConfigError(f"{where}: cannot import {target!r}: {err} (use path/to/file.py:{name} for a file "
                          f"that is not on the Python path)") from None
    except SyntaxError as err:
        raise ConfigError(f"{err.filename}:{err.lineno}: {where}: syntax error in the reward code: {err.msg}") from None
    except Exception as err:  # the user's module ran and raised: say where, not a traceback into ft
        raise ConfigError(f"{where}: importing {target!r} raised {type(err).__name__}: {err}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        found = "" if fn is None else f" ({name} is a {type(fn).__name__})"
        raise ConfigError(f"{where}: {target!r} has no function {name!r}{found}")
    return fn


# --------------------------------------------------------------------------- reward models
def load_score_model(path: str, where: str, *, dtype: str = "float32",
                     trust_remote_code: bool = False) -> PreTrainedModel:
    """A sequence-classification model with one output, from a full model or a LoRA adapter directory.

    An adapter (a LoRA `reward` run's final/) is merged into its base: PPO reads the backbone and
    `score` head directly, which a PEFT wrapper would hide.
    """
    import torch

    from finetune.hub import hub_offline
    from finetune.model_kinds import model_kind
    from finetune.models import load_trained

    local = Path(path).expanduser()
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype), "trust_remote_code": trust_remote_code}
    if not local.exists():
        hub_offline()
    try:
        if local.exists():
            # The base of an adapter has a causal LM's config (num_labels 2); the saved head has one row.
            model, _ = load_trained(local.resolve(), kind="sequence_classification", dtype=dtype, merge=True,
                                    num_labels=1, trust_remote_code=trust_remote_code, with_tokenizer=False)
        else:
            model = model_kind("sequence_classification").auto().from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{where}: cannot load a sequence-classification model from {path!r}: "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if model.config.num_labels != 1:
        raise ConfigError(f"{where}: {path!r} has {model.config.num_labels} outputs; a reward model has one "
                          f"(train one with the `reward` objective)")
    return model


def load_score_tokenizer(path: str, where: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(Path(path).expanduser().resolve())
                                                  if Path(path).expanduser().exists() else path,
                                                  trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{where}: no tokenizer in {path!r} ({err}); a reward model is scored with its own "
                          f"tokenizer, save it next to the weights") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
