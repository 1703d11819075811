"""Image-text conversations: image files, the image processor, and token ids with exact masks.

A row of the `vision_sft` form is a conversation whose user turns hold text and image parts
(`data_templates.formats`, format `vision_messages`). It is tokenized with the text machinery
(`data_templates.masking`, exact assistant masks for any template) and then each image is expanded:

1. Each image part becomes the text the chat template writes for one image (Qwen2-VL:
   `<|vision_start|><|image_pad|><|vision_end|>`), found by rendering the template, so the
   conversation is plain text and `masking.tokenize_conversation` finds the assistant spans.
2. The image processor reads the image and says its patch grid; the image token (the model config's
   `image_token_id`) is repeated as many times as the model has image embeddings for it
   (grid t*h*w // merge_size**2, the count Qwen2VLProcessor uses), and every token of the
   placeholder, image tokens and vision start/end alike, gets label -100: image tokens are never
   trained, whatever `loss_on` says.

The trainer row keeps the image paths and grids, not pixels: the collator (`finetune.vlm`) reads the
images again per batch, as TRL's vision collator does, and checks each grid is still the same.
Relative image paths are relative to the data file's folder.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_templates.formats import RowError
from data_templates.masking import IGNORE_INDEX, tokenize_conversation

# Private-use characters around an image part when locating what the template writes for it.
_BEFORE, _AFTER = "\ue010", "\ue011"


@dataclass(frozen=True)
class VisionProcessor:
    """What turns images into model inputs: the model's image processor and its image token."""

    image_processor: Any
    image_token_id: int

    def grid(self, image: Any) -> list[int]:
        """The (t, h, w) patch grid the image processor gives this image."""
        out = self.image_processor(images=[image], return_tensors="pt")
        return [int(x) for x in out["image_grid_thw"][0].tolist()]

    def tokens_for(self, grid: list[int]) -> int:
        """Image tokens for a patch grid: patches merged merge_size x merge_size into one embedding."""
        merge = int(getattr(self.image_processor, "merge_size", 1) or 1)
        return math.prod(grid) // merge**2

    def pixels(self, images: list[Any]) -> dict[str, Any]:
        """pixel_values and image_grid_thw of a batch's images, as the model's forward takes them."""
        out = self.image_processor(images=images, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}


def is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def resolve_image(ref: str, source: str) -> str:
    """A URL as it is; a local path made absolute, a relative one against the data file's folder."""
    if is_url(ref):
        return ref
    path = Path(ref).expanduser()
    if not path.is_absolute():
        base = Path(source).expanduser()
        path = (base if base.is_dir() else base.parent) / path
    return str(path.resolve())


def image_refs(messages: list[dict[str, Any]]) -> list[str]:
    """The image parts' paths or URLs, in conversation order."""
    return [part["image"] for m in messages if isinstance(m["content"], list)
            for part in m["content"] if part["type"] == "image"]


def check_images_exist(example: dict[str, Any], source: str) -> None:
    """RowError naming the key of the first image file that does not exist (URLs are not fetched)."""
    for key, ref in _image_keys(example["messages"]):
        path = resolve_image(ref, source)
        if not is_url(path) and not Path(path).is_file():
            raise RowError(f"{key}: image file {path} does not exist")


def _image_keys(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(f"messages[{i}].content[{j}].image", part["image"]) for i, m in enumerate(messages)
            if isinstance(m["content"], list) for j, part in enumerate(m["content"]) if part["type"] == "image"]


def image_problems(spec: Any, limit: int = 5) -> list[str]:
    """`ft validate`'s look at a local vision dataset: rows that do not fit the format, image files that
    do not exist (each as file:row: key: why, the first `limit`), or no image at all. Images are not
    decoded here; a file that is not an image is found when the data is prepared."""
    from data_templates.formats import FORMATS
    from data_templates.prepare import map_columns
    from data_templates.sources import DataSourceError, read_rows

    problems: list[str] = []
    seen_image = False
    try:
        for origin, row in read_rows(spec):
            try:
                example = FORMATS[spec.format].convert(map_columns(row, spec.columns))
                seen_image = seen_image or bool(image_refs(example["messages"]))
                check_images_exist(example, origin.source)
            except RowError as err:
                problems.append(f"{origin}: {err}")
            if len(problems) >= limit:
                return problems
    except DataSourceError as err:
        return [str(err)]
    if not seen_image and not problems:
        problems.append(f"{spec.path}: no row has an image part ({{type: image, image: PATH}} in a user turn); "
                        f"for text-only data use objective.kind: sft with format: messages")
    return problems


def require_images(rows: list[tuple[Any, dict[str, Any]]], name: str) -> None:
    """A vision-language dataset with no image at all is a mistake (text-only data: objective sft)."""
    from data_templates.prepare import DataError

    if not any(image_refs(row["messages"]) for _, row in rows):
        raise DataError(f"{name}: no row has an image part ({{type: image, image: PATH}} in a user turn's content); "
                        f"vlm_sft trains a vision-language model on images: for text-only data use objective.kind: "
                        f"sft with format: messages")


def open_image(path: str) -> Any:
    """The image as RGB; RowError (never a PIL traceback) when it is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        if is_url(path):
            from transformers.image_utils import load_image

            return load_image(path).convert("RGB")
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise RowError(f"image file {path} does not exist") from None
    except UnidentifiedImageError:
        raise RowError(f"{path} is not an image file PIL can read (PNG, JPEG, WebP, ...)") from None
    except Exception as err:  # noqa: BLE001 - truncated files (OSError), network errors for URLs: all bad rows
        first = str(err).splitlines()[0] if str(err) else ""
        raise RowError(f"image {path} cannot be read ({type(err).__name__}: {first})") from None


def image_placeholder(tokenizer: Any) -> str:
    """The text the chat template writes for one image part."""
    message = {"role": "user", "content": [{"type": "text", "text": _BEFORE}, {"type": "image"},
                                           {"type": "text", "text": _AFTER}]}
    text = str(tokenizer.apply_chat_template([message], tokenize=False))
    start, end = text.find(_BEFORE), text.find(_AFTER)
    if start < 0 or end <= start or not text[start + 1:end]:
        raise ValueError("the chat template does not render image content parts; use the model's own template")
    return text[start + 1:end]


def _flatten(messages: list[dict[str, Any]], placeholder: str) -> list[dict[str, str]]:
    """Messages with text content: parts joined, each image as the template's placeholder text."""
    return [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else "".join(
        placeholder if part["type"] == "image" else part["text"] for part in m["content"])} for m in messages]


def tokenize_vision_conversation(tokenizer: Any, vision: VisionProcessor, messages: list[dict[str, Any]],
                                 loss_on: str, source: str) -> dict[str, Any]:
    """input_ids and labels with each image expanded to its image tokens (never trained), plus the
    rows' `image_paths` and `image_grid_thw` for the collator. Raises RowError for a bad image."""
    placeholder = image_placeholder(tokenizer)
    flat = _flatten(messages, placeholder)
    if str(tokenizer.apply_chat_template(flat, tokenize=False)) != str(
            tokenizer.apply_chat_template(messages, tokenize=False)):
        raise ValueError("the chat template renders content parts differently from the same text; ft cannot "
                         "locate the image tokens")
    paths, grids = [], []
    for key, ref in _image_keys(messages):
        paths.append(resolve_image(ref, source))
        try:
            grids.append(vision.grid(open_image(paths[-1])))
        except RowError as err:
            raise RowError(f"{key}: {err}") from None
    tokens = tokenize_conversation(tokenizer, flat, loss_on)  # type: ignore[arg-type]
    # The placeholder's added tokens (vision start/end, the image token): never trained, wherever they are.
    # Its plain words (a template's "Picture 1: ") stay ordinary text.
    untrained = {vision.image_token_id} | (set(tokenizer(placeholder, add_special_tokens=False)["input_ids"])
                                           & set(tokenizer.added_tokens_decoder))
    ids: list[int] = []
    labels: list[int] = []
    counts = iter(vision.tokens_for(grid) for grid in grids)
    for token, label in zip(tokens["input_ids"], tokens["labels"]):
        repeat = next(counts, 0) if token == vision.image_token_id else 1
        ids += [token] * repeat
        labels += [IGNORE_INDEX if token in untrained else label] * repeat
    if ids.count(vision.image_token_id) != sum(vision.tokens_for(grid) for grid in grids):
        raise ValueError(f"the rendered conversation has {tokens['input_ids'].count(vision.image_token_id)} image "
                         f"tokens for {len(paths)} images")
    return {"input_ids": ids, "labels": labels, "image_paths": paths, "image_grid_thw": grids,
            "image_tokens": [vision.tokens_for(grid) for grid in grids]}


def vision_prompt(tokenizer: Any, vision: VisionProcessor, messages: list[dict[str, Any]], source: str = ".") -> dict[str, Any]:
    """Model inputs for the assistant's next turn after `messages` (image parts included): the ids of
    `masking.prompt_ids` (the training rule) with each image expanded as in training, the pixels and
    `mm_token_type_ids`, as one-row tensors."""
    import torch

    from data_templates.masking import prompt_ids

    placeholder = image_placeholder(tokenizer)
    paths = [resolve_image(ref, source) for ref in image_refs(messages)]
    images = [open_image(path) for path in paths]
    counts = iter(vision.tokens_for(vision.grid(image)) for image in images)
    ids: list[int] = []
    for token in prompt_ids(tokenizer, _flatten(messages, placeholder)):
        ids += [token] * (next(counts, 0) if token == vision.image_token_id else 1)
    input_ids = torch.tensor([ids])
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "mm_token_type_ids": (input_ids == vision.image_token_id).long()}
    return {**inputs, **(vision.pixels(images) if images else {})}


def truncate_vision(tokens: dict[str, Any], max_length: int, policy: str, image_token_id: int) -> dict[str, Any] | None:
    """The truncation policy for a row with images; None drops it. A cut that would split or remove an
    image's tokens drops the row: the model needs every image's tokens to match its pixels."""
    ids = tokens["input_ids"]
    if len(ids) <= max_length:
        return tokens
    if policy == "drop":
        return None
    cut = slice(None, max_length) if policy == "keep_start" else slice(-max_length, None)
    if ids[cut].count(image_token_id) != ids.count(image_token_id):
        return None
    return {**tokens, "input_ids": ids[cut], "labels": tokens["labels"][cut]}


_IMAGE_RUN = r"(?:{token})+"


def image_describer(tokenizer: Any, row: dict[str, Any]) -> Any:
    """A function that rewrites decoded text of `row` (a tokenized vision_sft row), each run of image
    tokens shown as `<image: PATH, N tokens>` in order (`ft data preview`); it keeps its place across
    calls, so the runs of a styled preview can be rewritten one by one."""
    counts = list(row.get("image_tokens") or [])
    ids = list(row["input_ids"])
    candidates = tokenizer(image_placeholder(tokenizer), add_special_tokens=False)["input_ids"]
    image_id = next((t for t in candidates if counts and ids.count(t) == sum(counts)), None)
    described = iter(zip(row.get("image_paths") or [], counts))
    if image_id is None:
        return lambda text: text
    pattern = re.compile(_IMAGE_RUN.format(token=re.escape(tokenizer.convert_ids_to_tokens(image_id))))

    def one(match: re.Match[str]) -> str:
        path, count = next(described, ("?", 0))
        return f"<image: {path}, {count} tokens>"

    return lambda text: pattern.sub(one, text)


def load_vision(location: str, image_processor_class: Any, trust_remote_code: bool = False,
                config_location: str | None = None) -> VisionProcessor:
    """The image processor saved with a model (preprocessor_config.json) and the image token of its config
    (`config_location`'s: a LoRA run's final/ has the processor, its base the config)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(config_location or location, trust_remote_code=trust_remote_code)
    token = getattr(config, "image_token_id", None)
    if token is None:
        raise ValueError(f"{location}: config.json has no image_token_id, so this is not a vision-language model "
                         f"ft can train (Qwen2-VL, Qwen2.5-VL)")
    processor = image_processor_class.from_pretrained(location, trust_remote_code=trust_remote_code)
    if "merge_size" not in processor.to_dict():
        raise ValueError(f"{location}: {type(processor).__name__} gives no patch grid (image_grid_thw); ft's vision "
                         f"SFT supports the Qwen2-VL family's image processors")
    return VisionProcessor(processor, int(token))
