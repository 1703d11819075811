"""Speed settings that need a GPU (Liger kernels, torch.compile) and the throughput in the manifest.

MFU (model FLOPs utilisation) = model FLOPs per token x tokens per second / the device's peak.
FLOPs per token of a training step, for a decoder with N parameters of which T are trained:
forward 2N, backward through the activations 2N, weight gradients 2T (a frozen base needs no
weight gradients: LoRA trains ~4N + 2T instead of the usual 6N), plus attention's
12 x layers x hidden x mean sequence length (PaLM's estimate). The peak comes from the table
below by GPU name; a device not in it (every CPU) gets tokens/s and a note that MFU needs a known
peak, never a made-up number.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from finetune.errors import ConfigError

if TYPE_CHECKING:
    from finetune.hardware import Hardware
    from finetune.recipe.schema import RecipeBase

# Dense peak TFLOP/s by GPU name substring: (bf16/fp16 tensor cores, fp32 through TF32). From the
# vendors' data sheets (SXM parts; PCIe H100 is lower and listed first so it matches first).
PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "H100 PCIe": (756.0, 378.0),
    "H100": (989.0, 494.0),
    "H200": (989.0, 494.0),
    "A100": (312.0, 156.0),
    "L40S": (362.0, 183.0),
    "L4": (121.0, 60.0),
    "A10G": (70.0, 35.0),
    "RTX 4090": (165.0, 83.0),
}


def recipe_problems(recipe: RecipeBase) -> list[tuple[tuple[str, ...], str]]:
    """What `ft validate` can tell without torch: Liger needs its extra and a GPU."""
    if not recipe.training.liger:
        return []
    if recipe.training.device == "cpu":
        return [(("training", "liger"), "Liger kernels are Triton GPU kernels and do not run on CPU "
                 "(training.device is cpu); set training.liger: false")]
    if importlib.util.find_spec("liger_kernel") is None:
        return [(("training", "liger"), "Liger kernels are not installed; pip install 'ft-toolkit[liger]' "
                 "(GPU only) or set training.liger: false")]
    return []


def check_hardware(recipe: RecipeBase, hardware: Hardware) -> None:
    """At run start, once the device is known: refuse GPU-only settings on CPU, saying why."""
    if recipe.training.liger and hardware.device == "cpu":
        raise ConfigError("training.liger: Liger kernels are Triton GPU kernels and this run is on CPU "
                          f"({hardware.name}); set training.liger: false or run on a CUDA GPU")
    problems = recipe_problems(recipe)
    if problems:
        raise ConfigError(problems[0][1])


def flops_per_token(total: int, trainable: int, layers: int, hidden: int, mean_length: float) -> float:
    """Training FLOPs per token (see module doc)."""
    return 4 * total + 2 * trainable + 12 * layers * hidden * mean_length


def peak_tflops(hardware_name: str, precision: str) -> float | None:
    for name, (half, single) in PEAK_TFLOPS.items():
        if name.lower() in hardware_name.lower():
            return single if precision == "fp32" else half
    return None


def report(*, tokens: int, train_seconds: float, examples: int, parameters: tuple[int, int], config: Any,
           hardware_name: str, device: str, precision: str) -> dict[str, Any]:
    """The manifest's throughput entry: tokens/s always, MFU where the device's peak is known."""
    trainable, total = parameters
    out: dict[str, Any] = {"train_time_s": round(train_seconds, 2), "tokens": tokens,
                           "tokens_per_s": round(tokens / train_seconds, 1) if train_seconds > 0 else None}
    layers = getattr(config, "num_hidden_layers", 0) or 0
    hidden = getattr(config, "hidden_size", 0) or 0
    mean_length = tokens / examples if examples else 0.0
    per_token = flops_per_token(total, trainable, layers, hidden, mean_length)
    out["flops_per_token"] = round(per_token)
    peak = peak_tflops(hardware_name, precision) if device == "cuda" else None
    if peak is None or not out["tokens_per_s"]:
        out["mfu"] = None
        out["mfu_note"] = (f"MFU needs the device's peak FLOP/s, which ft knows for GPUs only ({', '.join(PEAK_TFLOPS)}); "
                           f"this run is on {hardware_name}: tokens/s is reported")
        return out
    out["peak_tflops"] = peak
    out["mfu"] = round(per_token * out["tokens_per_s"] / (peak * 1e12), 4)
    return out


def from_trainer(trainer: Any, model: Any, hardware: Hardware) -> dict[str, Any]:
    """`report` for a finished trainer: real tokens seen (non-padding) over the training time."""
    from finetune.adapters import count_parameters

    state = trainer.state
    seconds = next((e["train_runtime"] for e in reversed(state.log_history) if "train_runtime" in e), 0.0)
    examples = state.global_step * trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
    config = getattr(model, "config", None)
    return report(tokens=int(state.num_input_tokens_seen or 0), train_seconds=seconds, examples=examples,
                  parameters=count_parameters(model), config=config, hardware_name=hardware.name,
                  device=hardware.device, precision=hardware.precision)
