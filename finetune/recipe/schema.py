"""The recipe schema: strict, frozen, typed pydantic models.

Every model forbids unknown keys (pydantic's default silently drops them, which turns a typo
into a silent no-op). Field descriptions feed `ft schema` and the docs. Objective sections are
registered by their modules (see `finetune.registry`) and joined into a discriminated union on
`kind` when the recipe model is built, so a DPO key in an SFT recipe is an error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Base for every recipe section: unknown keys are errors, validated values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


# --------------------------------------------------------------------------------------- model
class ModelSection(Strict):
    name_or_path: str = Field(
        description="Hugging Face Hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct) or a local model directory."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weights dtype. auto: bfloat16 where the hardware supports it, else float32.",
    )
    attn_implementation: str | None = Field(
        None, description="eager, sdpa, flash_attention_2, ... (None: transformers' default)."
    )
    trust_remote_code: bool = Field(
        False, description="Run modelling code shipped with the checkpoint. Off unless you trust it."
    )
    chat_template: str | None = Field(
        None,
        description="None: the tokenizer's own template. Else a shipped template name "
        "(chatml, llama3, mistral, gemma, phi3, alpaca, completion) or a path to a .jinja file.",
    )
    router_aux_loss_coef: float | None = Field(
        None, ge=0, description="Mixture-of-experts models (Mixtral, Qwen-MoE, OLMoE), sft and pretrain: weight of "
        "the router's load-balancing loss added to the training loss (logged as aux_loss). None: the model "
        "config's own coefficient; 0 turns it off. No effect on dense models.",
    )


# ------------------------------------------------------------------------------------- adapter
class FullAdapter(Strict):
    """Full fine-tuning, optionally of some layers only (partial fine-tuning)."""

    kind: Literal["none"] = "none"
    trainable_layers: list[int] | None = Field(
        None,
        description="Train only these decoder layers (0-based; negative counts from the end). "
        "Embeddings and head stay frozen unless listed in trainable_modules.",
    )
    trainable_modules: list[str] = Field(
        default_factory=list,
        description="Extra parameter-name substrings to train when trainable_layers is set "
        "(e.g. lm_head, embed_tokens, norm).",
    )
    train_vision: bool = Field(
        False, description="Vision-language models (vlm_sft): train the vision tower and its projector too. "
        "Default: they stay frozen and only the language model trains.")


class LoraAdapter(Strict):
    kind: Literal["lora"] = "lora"
    r: int = Field(16, gt=0, description="Rank of the update matrices.")
    alpha: float = Field(32, gt=0, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: Union[Literal["all-linear", "attention", "mlp", "experts"], list[str]] = Field(
        "all-linear", description="Modules to adapt: all-linear (every linear layer but the output layer and "
        "mixture-of-experts routers, plus a mixture-of-experts model's fused expert weights), attention (the "
        "attention projections), mlp (the feed-forward / shared-expert projections and the fused expert "
        "weights, no router), experts (the fused expert weights only), or a list of module names (a router "
        "only when named)."
    )
    dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r).")
    layers: list[int] | None = Field(
        None, description="Adapt only these decoder layers (PEFT layers_to_transform)."
    )
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained fully and saved with the adapter."
    )
    train_vision: bool = Field(
        False, description="Vision-language models (vlm_sft): LoRA on every linear layer of the vision tower and "
        "its projector too. Default: target_modules apply to the language model only (model.language_model.*) "
        "and the vision tower stays frozen.")


class QLoraAdapter(LoraAdapter):
    """LoRA on a 4-bit base model quantized by bitsandbytes (works on CPU with bitsandbytes>=0.48)."""

    kind: Literal["qlora"] = "qlora"  # type: ignore[assignment]
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too.")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Dtype of the matmuls on dequantized weights."
    )


Adapter = Annotated[Union[FullAdapter, LoraAdapter, QLoraAdapter], Field(discriminator="kind")]


# ---------------------------------------------------------------------------------------- data
class DatasetSpec(Strict):
    path: str = Field(
        description="A local file (.json, .jsonl, .csv, .parquet), a folder of them (read in sorted path order; "
        "hidden files skipped), or a Hub dataset id. A Hub dataset needs the network or the local datasets "
        "cache; offline, a missing one fails at once, naming it.",
    )
    format: str = Field(
        "messages",
        description="Row format: text, alpaca, sharegpt, messages, prompt_completion, preference, "
        "unpaired_preference, prompt_only, classification, vision_messages (image-text conversations, vlm_sft). "
        "Each dataset has its own.",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map the format's field names to your columns, e.g. {prompt: question}.",
    )
    name: str | None = Field(None, description="Hub dataset config name (Hub datasets only).")
    split: str = Field(
        "train", description="Split of a Hub dataset to read. A local file is read whole: give each split's own file."
    )
    revision: str | None = Field(
        None,
        description="Hub dataset revision (branch, tag or commit). Pin a commit for reproducible runs: the "
        "data cache knows a Hub dataset by id, config, split and revision only, so it does not notice an "
        "unpinned dataset changing upstream.",
    )
    weight: float | None = Field(
        None,
        gt=0,
        description="Share of this dataset in the training mix, relative to the other train datasets' weights; "
        "give every train dataset a weight, or none (then each row is used once). The mix has as many "
        "examples as the train datasets have rows together (after max_rows, bad rows, truncation and the "
        "validation split), and dataset i gets round(total * weight_i / sum of weights) of them: a share up to "
        "its size is a random subset without replacement; a larger share repeats every row share // size "
        "times plus a random subset for the rest. Random choices use the recipe seed, so the mix is the same "
        "every run. Validation data is never weighted.",
    )
    max_rows: int | None = Field(
        None,
        gt=0,
        description="Read only the first N rows (file order; a folder's files in sorted order), before bad "
        "rows are skipped, the validation split and mixing.",
    )


class DataSection(Strict):
    train: list[DatasetSpec] = Field(min_length=1, description="Training datasets.")
    validation: list[DatasetSpec] = Field(
        default_factory=list, description="Validation datasets (else carved by validation_fraction)."
    )
    validation_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Fraction of the train rows held out for validation (at least one row), drawn at random "
        "with the recipe seed from all train datasets together, before weighting, so a held-out row never "
        "appears in training.",
    )
    max_length: int = Field(1024, gt=0, description="Maximum tokens per example.")
    truncation: Literal["keep_start", "keep_end", "drop"] = Field(
        "keep_start",
        description="Over-long examples: keep the first max_length tokens, keep the last, or drop the row. A "
        "row left with no trained token is dropped. The run starts by reporting per dataset, e.g. "
        "'12 of 5,000 rows truncated, 0 dropped'.",
    )
    packing: bool = Field(
        False,
        description="mlm: concatenate the tokenized texts and cut them into rows of exactly max_length "
        "tokens (full attention across the joined texts, as BERT was pre-trained). sft and pretrain: pack tokenized examples into rows of up to max_length tokens (TRL's "
        "best-fit-decreasing packing; no example is cut), trained padding-free: less compute wasted on "
        "padding, fewer steps per epoch. Effect on attention: a packed row has no attention mask and its "
        "position ids restart at each example. flash_attention_2/3 keep the examples apart exactly. With "
        "eager or sdpa, transformers' own decoder models (Llama, Qwen2, Mistral, Phi-3, Gemma, ...) build a "
        "per-example mask from those position ids, so examples stay apart too (checked with transformers 5 "
        "and TRL 1.12); a model with custom code (trust_remote_code) or a recurrent one (Mamba, RWKV) may "
        "not, and then packed examples attend to each other (cross-contamination). The run prints a line "
        "saying which case applies.",
    )
    batching: Literal["length", "random", "padding_free"] = Field(
        "length",
        description="How unpacked examples form batches. length: batches of similar length (sorted within "
        "shuffled mega-batches of 50 batches, batch order shuffled, a new order each epoch from the seed), so a "
        "batch pads to its own longest row; every example once per epoch. padding_free (sft, pretrain): a batch "
        "is one row without padding, position ids keep examples apart in attention (as with packing), the loss "
        "is the same per-token mean. random: plain shuffling. Ignored with packing. The run names the mode.",
    )
    bad_rows: Literal["fail", "skip"] = Field(
        "fail",
        description="A row that does not fit its format (missing field, wrong type, unknown role, empty "
        "conversation, no assistant turn) or that the chat template cannot render: fail stops the run naming "
        "file and row; skip leaves it out, and the run reports how many and the first.",
    )
    cache: bool = Field(
        True,
        description="Cache tokenized datasets in $FT_CACHE, else ~/.cache/ft/data. An entry is keyed on the "
        "data's content (a Hub dataset: id, config, split, revision), the tokenizer (vocabulary, special "
        "tokens, chat template) and every option that changes the tokens (format, columns, max_rows, "
        "max_length, truncation, bad_rows, loss_on), so a run with the same inputs loads it instead of "
        "tokenizing again, and any change tokenizes anew. The validation split and weights are applied after "
        "loading, so changing them does not re-tokenize. Entries are written atomically; deleting the folder "
        "is always safe.",
    )


# ------------------------------------------------------------------------------------ training
class TrainingSection(Strict):
    epochs: float = Field(1.0, gt=0, description="Passes over the data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, gt=0, description="Examples per device per forward pass.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Forward passes per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: str = Field(
        "cosine", description="linear, cosine, constant, constant_with_warmup, ..."
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps spent warming up.")
    warmup_steps: int = Field(0, ge=0, description="Warmup steps (wins over warmup_ratio when > 0).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    optimizer: str | None = Field(
        None, description="transformers optimizer name (adamw_torch, adamw_8bit, ...); None: transformers' "
        "default, the fused AdamW on recent torch.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."
    )
    logging_steps: int = Field(10, gt=0, description="Log metrics every N steps.")
    save_steps: int | None = Field(
        None, gt=0, description="Checkpoint every N steps (None: at the end of each epoch)."
    )
    save_total_limit: int | None = Field(2, gt=0, description="Keep at most this many checkpoints.")
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N steps when there is validation data.")
    report_to: list[str] = Field(
        default_factory=list, description="Trackers: wandb, tensorboard, ... (empty: none)."
    )
    nproc: int = Field(1, gt=0, description="Processes to launch (one per GPU; CPU works too).")
    distributed: Literal["auto", "ddp", "fsdp", "zero2", "zero3"] = Field(
        "auto", description="auto: ddp when more than one process. fsdp: FSDP2 full sharding (GPUs only); "
        "zero2/zero3: DeepSpeed ZeRO (pip install -e '.[deepspeed]'). See finetune/distributed.py.")
    offload_optimizer: bool = Field(
        False, description="zero2/zero3: optimizer states in CPU memory. fsdp: parameters and gradients on CPU.")
    offload_params: bool = Field(False, description="zero3: parameters in CPU memory.")
    deepspeed_config: str | None = Field(
        None, description="Expert: your own DeepSpeed JSON instead of the one ft generates (zero2/zero3).")
    accelerate_config: str | None = Field(
        None, description="Expert: your own Accelerate config YAML for the launcher (GPU runs).")
    nnodes: int = Field(1, gt=0, description="Machines taking part (multi-node: one `ft run` per node).")
    node_rank: int = Field(0, ge=0, description="This machine's rank among nnodes (0 is the master).")
    master_addr: str = Field("127.0.0.1", description="Address of node 0, reachable from every node.")
    master_port: int = Field(29500, gt=0, lt=65536, description="Free TCP port on node 0 for the rendezvous.")
    rdzv_timeout: int = Field(
        300, gt=0, description="Seconds to wait for every node to join before giving up.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when present, else CPU."
    )
    progress_bar: bool = Field(True, description="Show a progress bar.")
    liger: bool = Field(
        False, description="Liger kernels (fused RMSNorm, RoPE, SwiGLU, cross-entropy): GPU only, needs the "
        "'liger' extra (pip install 'ft-toolkit[liger]'). Refused on CPU.")
    compile: bool = Field(False, description="torch.compile the model before training (slow first steps).")
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Escape hatch: more fields for the TRL config class of the objective, "
        "checked by constructing that class before training starts.",
    )


# -------------------------------------------------------------------------------- objectives
class ObjectiveSection(Strict):
    """Base of every objective section; each objective module subclasses it with a literal kind."""

    kind: str

    def loss_policy(self) -> str:
        """Which tokens of a tokenized example get loss (see data_templates.masking.LossOn)."""
        return "all"

    def recipe_problems(self, recipe: "RecipeBase") -> list[tuple[tuple[str | int, ...], str]]:
        """(key path, message) for settings elsewhere in the recipe this objective cannot honour,
        so `ft validate` reports them instead of the trainer failing at `ft run`."""
        return []

    def head_config(self, data: Any) -> dict[str, Any]:
        """Settings of the model's config this objective decides (a classifier's labels, say), given
        the prepared data (`finetune.pipeline`) or None when only the recipe is known."""
        return {}

    def check_row(self, example: dict[str, Any]) -> None:
        """Raise data_templates.formats.RowError when a canonical example does not fit this
        objective's settings (a label outside its label set, say); the data layer adds file:row."""


# --------------------------------------------------------------------------------------- export
ExportDtype = Literal["float16", "bfloat16", "float32"]
# Written in Python (f32 .. q8_0) or as f16 plus the llama-quantize command (the k-quants).
GgufType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "tq1_0", "tq2_0", "mxfp4",
                   "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
                   "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq3_xxs", "iq3_xs", "iq3_s", "iq3_m", "iq4_nl", "iq4_xs"]


class _Export(Strict):
    out: str | None = Field(None, description="Output folder (default: <output_dir>/export/<to>).")
    name: str | None = Field(None, description="Served model name (default: the run directory's name).")


class MergedExport(_Export):
    to: Literal["merged"]
    dtype: ExportDtype | None = Field(None, description="Default: the training dtype (float16 from QLoRA).")


class EngineExport(_Export):
    to: Literal["vllm", "lmdeploy"]
    dtype: ExportDtype | None = Field(None, description="dtype of the merged model when one is needed.")


class GgufExport(_Export):
    to: Literal["gguf", "ollama"]
    type: GgufType = Field("f16", description="GGUF tensor type.")


class HubExport(_Export):
    to: Literal["hub"]
    name: str = Field(description="Hub repository OWNER/NAME to push to.")
    adapter_only: bool = Field(False, description="Push the adapter instead of the merged model.")
    dtype: ExportDtype | None = None


Export = Annotated[Union[MergedExport, EngineExport, GgufExport, HubExport], Field(discriminator="to")]


# --------------------------------------------------------------------------------------- recipe
class RecipeBase(Strict):
    """Shared keys of every recipe. `objective` is narrowed to the registered union at build time."""

    description: str = Field("", description="One line: what this recipe does.")
    model: ModelSection
    adapter: Adapter = Field(default_factory=LoraAdapter, description="none, lora or qlora.")
    data: DataSection
    objective: ObjectiveSection
    training: TrainingSection = Field(default_factory=TrainingSection)
    seed: int = Field(42, description="Seed for data order, initialisation and sampling.")
    output_dir: str = Field(description="Where the run writes final/, checkpoints/, metrics and manifest.")
    export: list[Export] = Field(
        default_factory=list,
        description="Exports to write after training, e.g. [{to: merged}, {to: gguf, type: q8_0}, {to: ollama}].")

