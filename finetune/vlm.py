"""Vision-language SFT: conversations with images, on a Qwen2-VL-family model, with TRL's SFTTrainer.

ft tokenizes the rows itself (data_templates.vision: images expanded to their image tokens, exact
assistant masks, image tokens never trained); the collator here pads the ids and labels and turns
each batch's image files into `pixel_values` + `image_grid_thw` with the model's image processor.
LoRA goes on the language model; the vision tower stays frozen unless adapter.train_vision.
"""

from __future__ import annotations

from typing import Any, Literal

from finetune.errors import TrainingError
from finetune.recipe.schema import RecipeBase
from finetune.registry import objective
from finetune.run_parts import RunParts
from finetune.sft import SFTSection


class VLMSFTSection(SFTSection):
    """sft's options (loss_on) for image-text conversations. Image tokens, and the vision start/end
    tokens around them, are never trained, whichever loss_on is chosen."""

    kind: Literal["vlm_sft"] = "vlm_sft"  # type: ignore[assignment]

    def recipe_problems(self, recipe: RecipeBase) -> list[tuple[tuple[str | int, ...], str]]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if recipe.data.batching == "padding_free":
            problems.append((("data", "batching"), ("vlm_sft pads its batches (the model places image tokens by "
                                                    "position); use length or random")))
        if recipe.data.truncation == "keep_end":
            problems.append((("data", "truncation"), ("vlm_sft: keep_end would cut the images off the start of a "
                                                      "conversation; use keep_start or drop")))
        return problems


class VisionCollator:
    """Pads input_ids (pad id), labels (-100) and attention_mask to the batch's longest row, and reads
    the batch's images into pixel_values / image_grid_thw (rows without images add none)."""

    def __init__(self, vision: Any, pad_token_id: int) -> None:
        self.vision, self.pad_token_id = vision, pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        from data_templates.masking import IGNORE_INDEX

        longest = max(len(row["input_ids"]) for row in rows)

        def padded(key: str, fill: int) -> Any:
            return torch.tensor([list(row[key]) + [fill] * (longest - len(row[key])) for row in rows])

        batch: dict[str, Any] = {
            "input_ids": padded("input_ids", self.pad_token_id),
            "labels": padded("labels", IGNORE_INDEX),
            "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (longest - len(r["input_ids"]))
                                            for r in rows]),
        }
        # Which tokens are image tokens (1) or text (0): Qwen2-VL places its 3-D rotary positions by it.
        batch["mm_token_type_ids"] = (batch["input_ids"] == self.vision.image_token_id).long()
        paths = [path for row in rows for path in (row.get("image_paths") or [])]
        if paths:
            batch.update(self._pixels(paths, [g for row in rows for g in (row.get("image_grid_thw") or [])]))
        return batch

    def _pixels(self, paths: list[str], grids: list[list[int]]) -> dict[str, Any]:
        from data_templates.formats import RowError
        from data_templates.vision import open_image

        try:
            images = [open_image(path) for path in paths]
        except RowError as err:
            raise TrainingError(f"an image changed or vanished since the data was prepared: {err}") from None
        out = self.vision.pixels(images)
        if out["image_grid_thw"].tolist() != [list(g) for g in grids]:
            changed = [p for p, g, now in zip(paths, grids, out["image_grid_thw"].tolist()) if list(g) != now]
            raise TrainingError(f"image size changed since the data was prepared: {', '.join(changed)}; run again "
                                f"so its image tokens are counted anew")
        return out


@objective("vlm_sft", section=VLMSFTSection, data_form="vision_sft", config_class="trl:SFTConfig",
           model_head="vision_causal_lm",
           description="Supervised fine-tuning of a vision-language model (Qwen2-VL) on image-text conversations.")
def build(parts: RunParts) -> Any:
    from trl import SFTConfig, SFTTrainer

    args = parts.trainer_config(
        SFTConfig,
        max_length=None,  # truncated in the data layer, never through an image
        # The rows carry image paths, which the model's forward does not take: the collator reads them.
        remove_unused_columns=False,
        # TRL's chunked loss patches a text model's head; the plain token loss works for every VLM.
        loss_type="nll",
    )
    return SFTTrainer(args=args, data_collator=VisionCollator(parts.vision, parts.tokenizer.pad_token_id),
                      **parts.trainer_inputs())
