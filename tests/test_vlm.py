"""Vision-language SFT data: image tokens expanded as the image processor counts them and never
trained, masks exact as for text, `ft data preview` shows where images go, and bad images or
image-less data fail naming the file, row and key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from data_templates.masking import IGNORE_INDEX
from finetune.errors import FtError
from finetune.recipe.errors import RecipeError
from finetune.recipe.loader import load_recipe
from finetune.tiny_vlm import build_tiny_vlm
from tests._runs import ROOT

RECIPE = ROOT / "recipes" / "vlm_sft.yaml"
SPECIAL = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "qwen2-vl")


@pytest.fixture(scope="session")
def vision(tiny_vlm: Path) -> Any:
    from transformers import AutoImageProcessor, AutoTokenizer

    from data_templates.vision import load_vision

    return AutoTokenizer.from_pretrained(tiny_vlm), load_vision(str(tiny_vlm), AutoImageProcessor)


def _image(path: Path, size: tuple[int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 30)).save(path)
    return path


def _conversation(first: str, second: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image", "image": first}, {"type": "text", "text": "Compare"},
                                         {"type": "image", "path": second}]},
            {"role": "assistant", "content": "Both green."},
            {"role": "user", "content": "Sure?"},
            {"role": "assistant", "content": "Yes."}]


def test_image_tokens_are_counted_as_the_processor_does_and_never_trained(vision: Any, tmp_path: Path) -> None:
    from data_templates.formats import FORMATS
    from data_templates.vision import tokenize_vision_conversation

    tokenizer, vp = vision
    _image(tmp_path / "a.png", (84, 56))
    _image(tmp_path / "img" / "b.png", (112, 112))
    messages = FORMATS["vision_messages"].convert({"messages": _conversation("a.png", "img/b.png")})["messages"]
    row = tokenize_vision_conversation(tokenizer, vp, messages, "assistant", str(tmp_path / "data.jsonl"))
    ids, labels = row["input_ids"], row["labels"]
    merge = vp.image_processor.merge_size
    # The image processor's own count for each size: (84x56 -> 4x6 patches, 112x112 -> 8x8) / merge^2.
    expected = [vp.image_processor.get_number_of_image_patches(56, 84, {}) // merge**2,
                vp.image_processor.get_number_of_image_patches(112, 112, {}) // merge**2]
    assert expected == [6, 16] and row["image_tokens"] == expected
    assert row["image_grid_thw"] == [[1, 4, 6], [1, 8, 8]]
    assert row["image_paths"] == [str(tmp_path / "a.png"), str(tmp_path / "img" / "b.png")]
    special = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL]
    assert ids.count(special[1]) == sum(expected) and ids.count(special[0]) == ids.count(special[2]) == 2
    assert all(label == IGNORE_INDEX for token, label in zip(ids, labels) if token in special)
    trained = [token for token, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert [label for label in labels if label != IGNORE_INDEX] == trained  # labels are the ids themselves
    assert tokenizer.decode(trained) == "Both green.<|im_end|>Yes.<|im_end|>"
    # loss_on: all trains the text around the images, never the image tokens.
    every = tokenize_vision_conversation(tokenizer, vp, messages, "all", str(tmp_path / "data.jsonl"))
    assert every["input_ids"] == ids
    assert [t for t, label in zip(ids, every["labels"]) if label == IGNORE_INDEX] == \
        [t for t in ids if t in special]


def test_collator_pads_and_reads_the_pixels(vision: Any, tmp_path: Path) -> None:
    from data_templates.formats import FORMATS
    from data_templates.vision import tokenize_vision_conversation
    from finetune.vlm import VisionCollator

    tokenizer, vp = vision
    _image(tmp_path / "a.png", (84, 56))
    _image(tmp_path / "img" / "b.png", (112, 112))
    messages = FORMATS["vision_messages"].convert({"messages": _conversation("a.png", "img/b.png")})["messages"]
    with_images = tokenize_vision_conversation(tokenizer, vp, messages, "assistant", str(tmp_path / "d.jsonl"))
    text_only = tokenize_vision_conversation(tokenizer, vp, [{"role": "user", "content": "Hi"},
                                                             {"role": "assistant", "content": "Hello."}],
                                             "assistant", str(tmp_path / "d.jsonl"))
    batch = VisionCollator(vp, tokenizer.pad_token_id)([text_only, with_images])
    n = len(with_images["input_ids"])
    assert batch["input_ids"].shape == (2, n) and batch["attention_mask"][0].sum() == len(text_only["input_ids"])
    assert batch["labels"][0, len(text_only["input_ids"]):].eq(IGNORE_INDEX).all()
    assert batch["image_grid_thw"].tolist() == [[1, 4, 6], [1, 8, 8]]
    assert batch["pixel_values"].shape[0] == 24 + 64  # one row per patch
    assert batch["mm_token_type_ids"].sum() == 6 + 16


def _recipe(tmp_path: Path, model: Path, rows: list[dict[str, Any]], **files: bytes) -> Path:
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = RECIPE.read_text().replace("examples/data/vlm.jsonl", str(data))
    raw = raw.replace("Qwen/Qwen2-VL-2B-Instruct", str(model)).replace("runs/vlm_sft", str(tmp_path / "run"))
    path = tmp_path / "recipe.yaml"
    path.write_text(raw)
    return path


def _row(image: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [{"type": "image", "image": image},
                                                      {"type": "text", "text": "What is it?"}]},
                         {"role": "assistant", "content": "A shape."}]}


def _prepare(recipe_path: Path) -> Any:
    from finetune.models import load_tokenizer
    from finetune.pipeline import load_data
    from finetune.registry import get_objective

    recipe = load_recipe(recipe_path)
    return load_data(recipe, load_tokenizer(recipe.model), get_objective("vlm_sft"))


def test_validate_names_the_row_and_key_of_a_missing_image(tmp_path: Path, tiny_vlm: Path) -> None:
    _image(tmp_path / "ok.png", (56, 56))
    path = _recipe(tmp_path, tiny_vlm, [_row("ok.png"), _row("nope.png")])
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert f"{tmp_path / 'data.jsonl'}:2: messages[0].content[0].image: image file {tmp_path / 'nope.png'} " \
           f"does not exist" in str(err.value)


def test_a_png_that_is_not_an_image_fails_at_preparation(tmp_path: Path, tiny_vlm: Path) -> None:
    _image(tmp_path / "ok.png", (56, 56))
    path = _recipe(tmp_path, tiny_vlm, [_row("ok.png"), _row("fake.png")], **{"fake.png": b"just some text\n"})
    load_recipe(path)  # exists: validate cannot tell without decoding it
    with pytest.raises(FtError) as err:
        _prepare(path)
    message = str(err.value)
    assert f"{tmp_path / 'data.jsonl'}:2: messages[0].content[0].image: {tmp_path / 'fake.png'} is not an image" \
        in message and "Traceback" not in message and "PIL." not in message


def test_vlm_data_without_images_is_refused(tmp_path: Path, tiny_vlm: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}]
    path = _recipe(tmp_path, tiny_vlm, rows)
    with pytest.raises(RecipeError, match="no row has an image part"):
        load_recipe(path)


def test_an_image_in_text_only_data_names_the_row_and_key(tmp_path: Path, chat_model: Path) -> None:
    from finetune.models import load_tokenizer
    from finetune.pipeline import load_data
    from finetune.registry import get_objective
    from tests._data import write_recipe

    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello."}]}) + "\n"
                    + json.dumps(_row("x.png")) + "\n")
    recipe = load_recipe(write_recipe(tmp_path, chat_model, f"train:\n  - path: {data}\n"))
    with pytest.raises(FtError) as err:
        load_data(recipe, load_tokenizer(recipe.model), get_objective("sft"))
    assert f"{data}:2: messages[0].content has an image part" in str(err.value)
    assert "vision_messages" in str(err.value) and "vlm_sft" in str(err.value)


def test_preview_shows_where_the_images_go(tmp_path: Path, tiny_vlm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli import app

    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, ["data", "preview", str(RECIPE), f"model.name_or_path={tiny_vlm}", "-n", "1",
                                      "--json"])
    assert result.exit_code == 0, result.output
    example = json.loads(result.stdout.splitlines()[0])
    image = str(ROOT / "examples" / "data" / "images" / "red_square.png")
    assert example["images"] == [{"path": image, "tokens": 6, "grid_thw": [1, 4, 6]}]
    assert f"<|vision_start|><image: {image}, 6 tokens><|vision_end|>What is in this picture?" in example["text"]
    rich = CliRunner().invoke(app, ["data", "preview", str(RECIPE), f"model.name_or_path={tiny_vlm}", "-n", "1"])
    assert rich.exit_code == 0 and "<image:" in rich.output and "<|image_pad|>" not in rich.output


def test_listings_name_the_new_kind_and_format() -> None:
    from cli import app

    objectives = CliRunner().invoke(app, ["objectives"])
    assert "vlm_sft" in objectives.output and "vision_messages" in objectives.output
    assert "vlm_sft" in CliRunner().invoke(app, ["recipes"]).output
    schema = CliRunner().invoke(app, ["schema"]).output
    assert "vlm_sft" in schema and "vision_messages" in schema and "train_vision" in schema


def test_smoke_shrinks_the_vision_tower_and_keeps_the_processor(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    from finetune.smoke.shrink import shrink
    from finetune.tiny_vlm import QWEN2_VL_PREPROCESSOR, QWEN2_VL_TEMPLATE
    from tests._fake_hub import _QWEN2_VL_2B, write_vlm

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    write_vlm(tmp_path / "hf", "Qwen/Qwen2-VL-2B-Instruct", _QWEN2_VL_2B)
    shrunk = shrink("Qwen/Qwen2-VL-2B-Instruct", tmp_path / "out", head="vision_causal_lm")
    saved = json.loads((shrunk.path / "config.json").read_text())
    text, vision = saved["text_config"], saved["vision_config"]
    assert shrunk.architecture == "Qwen2VLForConditionalGeneration" and shrunk.parameters < 300_000
    assert text["num_hidden_layers"] == 2 and text["hidden_size"] == 64
    assert vision["depth"] == 2 and vision["embed_dim"] == 32 and vision["hidden_size"] == text["hidden_size"]
    assert sum(text["rope_parameters"]["mrope_section"]) == 64 // text["num_attention_heads"] // 2
    assert vision["patch_size"] == 14 and vision["spatial_merge_size"] == 2  # image token counts as the real one
    assert saved["image_token_id"] == AutoTokenizer.from_pretrained(shrunk.path).convert_tokens_to_ids("<|image_pad|>")
    assert json.loads((shrunk.path / "preprocessor_config.json").read_text()) == QWEN2_VL_PREPROCESSOR
    assert AutoTokenizer.from_pretrained(shrunk.path).chat_template == QWEN2_VL_TEMPLATE


def test_train_vision_on_a_text_objective_is_refused_at_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(RecipeError, match="adapter.train_vision: objective 'sft' trains a text model"):
        load_recipe(ROOT / "recipes" / "sft_lora.yaml", ["adapter.train_vision=true"])


@pytest.mark.parametrize(("content_of", "why"), [
    ({"assistant": [{"type": "image", "image": "a.png"}]}, "messages[1].content[0]: an image in a turn of role assistant"),
    ({"user": [{"type": "image"}]}, "messages[0].content[0]: an image part needs a file path or URL"),
    ({"user": [{"type": "audio", "audio": "a.wav"}]}, "messages[0].content[0] must be {type: text, text: ...}"),
])
def test_bad_content_parts_name_the_key(content_of: dict[str, Any], why: str) -> None:
    from data_templates.formats import FORMATS, RowError

    row = _row("a.png")
    for message in row["messages"]:
        message["content"] = content_of.get(message["role"], message["content"])
    with pytest.raises(RowError) as err:
        FORMATS["vision_messages"].convert(row)
    assert why in str(err.value)


def test_vlm_sft_on_a_text_model_says_it_is_not_a_vision_language_model(tmp_path: Path, chat_model: Path) -> None:
    _image(tmp_path / "ok.png", (56, 56))
    path = _recipe(tmp_path, chat_model, [_row("ok.png")])
    with pytest.raises(FtError, match="has no image_token_id, so this is not a vision-language model"):
        _prepare(path)


def test_a_cut_through_an_image_drops_the_row() -> None:
    from data_templates.vision import truncate_vision

    row = {"input_ids": [1, 7, 7, 7, 2, 3, 4], "labels": [-100, -100, -100, -100, -100, 3, 4],
           "image_paths": ["a.png"], "image_grid_thw": [[1, 2, 6]], "image_tokens": [3]}
    assert truncate_vision(row, 7, "keep_start", 7) is row
    assert truncate_vision(row, 5, "keep_start", 7)["input_ids"] == [1, 7, 7, 7, 2]  # the image stays whole
    assert truncate_vision(row, 3, "keep_start", 7) is None  # would split the image
    assert truncate_vision(row, 5, "keep_end", 7) is None  # would split the image
    assert truncate_vision(row, 6, "drop", 7) is None


def test_recipe_settings_vlm_sft_cannot_honour_fail_at_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(RecipeError) as err:
        load_recipe(RECIPE, ["data.batching=padding_free", "data.truncation=keep_end", "data.packing=true"])
    for key in ("data.batching: vlm_sft pads", "data.truncation: vlm_sft: keep_end", "data.packing"):
        assert key in str(err.value)
