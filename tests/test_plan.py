"""`ft plan`: parameter counts and memory of real published configs against hand calculations."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli
from finetune.errors import ConfigError
from finetune.plan import architecture, read_config
from finetune.plan_memory import Setup, estimate
from finetune.plan_report import parse_memory

DATA = Path(__file__).parent / "data" / "plan"
QWEN05, MISTRAL, MIXTRAL, QWEN_MOE = (str(DATA / n) for n in (
    "qwen2.5-0.5b-instruct", "mistral-7b-v0.1", "mixtral-8x7b-v0.1", "qwen1.5-moe-a2.7b"))
GIB = 1024**3


def arch(path: str):
    return architecture(read_config(path))


def test_qwen25_05b_parameters_and_lora_memory() -> None:
    # Hand count: per layer q 896*896+896, k and v 896*128+128 each, o 896*896, MLP 3*896*4864, 2 norms of 896.
    layer = (896 * 896 + 896) + 2 * (896 * 128 + 128) + 896 * 896 + 3 * 896 * 4864 + 2 * 896
    total = 24 * layer + 151936 * 896 + 896  # tied embeddings: no separate lm_head
    assert total == 494_032_768
    a = arch(QWEN05)
    assert a.total == total

    s = Setup(adapter="lora", r=16, dtype="bfloat16", seq=512, batch=2, optimizer="adamw_torch")
    e = estimate(a, s)
    # LoRA r=16 on all seven linears: r*(in+out) each (PEFT prints 8,798,208 for this model).
    lora_layer = 16 * ((896 + 896) * 2 + (896 + 128) * 2 + (896 + 4864) * 2 + (4864 + 896))
    lora = 24 * lora_layer
    assert lora == 8_798_208 and e.trainable_params == lora
    assert e.bytes["weights"] == total * 2
    assert e.bytes["adapter"] == lora * 4 and e.bytes["gradients"] == lora * 4
    assert e.bytes["optimizer"] == lora * 8  # two fp32 Adam states
    tokens = 512 * 2
    per_layer = 4 * 896 + 2 * 14 * 64 + 2 * 2 * 64 + 4 * 4864 + (4 * (896 + 16) + 2 * (896 + 16) + (4864 + 16))
    acts = tokens * (24 * per_layer + 2 * 896) * 2 + tokens * 151936 * (2 + 12)
    assert e.bytes["activations"] == pytest.approx(acts)
    assert e.bytes["models"] == 0


def test_mistral_7b_full_finetune_sharded_by_zero3() -> None:
    layer = 4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336 + 2 * 4096
    total = 32 * layer + 2 * 32000 * 4096 + 4096
    assert total == 7_241_732_096
    a = arch(MISTRAL)
    assert a.total == total
    base = Setup(adapter="none", dtype="bfloat16", seq=2048, batch=1, checkpointing=True)
    ddp = estimate(a, base)
    # Plain bf16 training: bf16 weights and grads, torch AdamW keeps its two states in the parameter dtype.
    assert (ddp.bytes["weights"], ddp.bytes["gradients"], ddp.bytes["optimizer"]) == (2 * total, 2 * total, 4 * total)
    z3 = estimate(a, Setup(**{**base.__dict__, "strategy": "zero3", "gpus": 8}))
    # ZeRO-3 on 8 GPUs: weights, grads and fp32 master + two fp32 states all divided by 8.
    assert z3.bytes["weights"] == 2 * total / 8
    assert z3.bytes["gradients"] == 2 * total / 8
    assert z3.bytes["optimizer"] == (4 + 8) * total / 8
    z2 = estimate(a, Setup(**{**base.__dict__, "strategy": "zero2", "gpus": 8}))
    assert z2.bytes["weights"] == 2 * total and z2.bytes["optimizer"] == 12 * total / 8
    # Checkpointing keeps only layer inputs plus one layer: tokens*(32*4096 + one layer + 2*4096)*2 + logits.
    one = 4 * 4096 + 2 * 32 * 128 + 2 * 8 * 128 + 4 * 14336
    assert ddp.bytes["activations"] == 2048 * (32 * 4096 + one + 2 * 4096) * 2 + 2048 * 32000 * 14


def test_mixtral_8x7b_moe_and_qlora() -> None:
    attn = 4096 * 4096 * 2 + 4096 * 1024 * 2
    experts = 8 * 3 * 4096 * 14336  # fused gate_up (8, 2*14336, 4096) and down (8, 4096, 14336)
    layer = attn + experts + 8 * 4096 + 2 * 4096  # + router (8, 4096) + 2 norms
    total = 32 * layer + 2 * 32000 * 4096 + 4096
    assert total == 46_702_792_704
    a = arch(MIXTRAL)
    assert a.total == total and a.intermediate == 2 * 14336  # two experts active per token
    q = estimate(a, Setup(adapter="qlora", r=8, dtype="bfloat16", seq=1024, batch=1))
    # transformers 5 keeps experts as fused parameters, not nn.Linear: only attention is 4-bit.
    linear = 32 * attn
    assert q.bytes["weights"] == pytest.approx(linear * (0.5 + 1 / 64 + 4 / (64 * 256)) + (total - linear) * 2)
    # all-linear puts LoRA on attention and on the fused experts: r*(in+out) per expert and tensor.
    lora_attn = 8 * ((4096 + 4096) * 2 + (4096 + 1024) * 2)
    lora_experts = 8 * 8 * ((4096 + 2 * 14336) + (14336 + 4096))
    assert q.trainable_params == 32 * (lora_attn + lora_experts)
    presets = {"attention": lora_attn, "experts": lora_experts, "mlp": lora_experts}
    for preset, per_layer in presets.items():
        assert estimate(a, Setup(adapter="qlora", r=8, target_modules=preset)).trainable_params == 32 * per_layer
    assert estimate(a, Setup(r=8, target_modules="experts", lora_layers=(-1,))).trainable_params == lora_experts


def test_qwen15_moe_shared_experts() -> None:
    attn = 4 * 2048 * 2048 + 3 * 2048
    moe = 60 * 3 * 2048 * 1408 + 60 * 2048  # experts + router
    shared = 3 * 2048 * 5632 + 2048  # shared expert + its gate
    total = 24 * (attn + moe + shared + 2 * 2048) + 2 * 151936 * 2048 + 2048
    assert arch(QWEN_MOE).total == total
    assert round(total / 1e9, 1) == 14.3


def test_dpo_reference_copy_only_under_full_finetuning(tmp_path: Path) -> None:
    args = ["plan", "recipes/dpo.yaml", f"model.name_or_path={QWEN05}", "--json"]
    full = json.loads(CliRunner().invoke(cli.app, [*args, "adapter.kind=none"]).output)
    lora = json.loads(CliRunner().invoke(cli.app, args).output)
    assert full["setup"]["aux"] == ["reference"] and lora["setup"]["aux"] == []
    assert full["bytes_per_device"]["models"] == 494_032_768 * 2 and lora["bytes_per_device"]["models"] == 0


def test_cli_fit_and_suggestions_without_torch() -> None:
    result = CliRunner().invoke(cli.app, ["plan", "recipes/sft_full.yaml", f"model.name_or_path={MISTRAL}",
                                          "--gpu-memory", "80GB", "--gpus", "8", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["fits"] is False and out["suggestions"]
    assert all(s["total_bytes_per_device"] <= 80e9 for s in out["suggestions"])
    assert "zero3" in " ".join(s["change"] for s in out["suggestions"])
    table = CliRunner().invoke(cli.app, ["plan", "recipes/sft_lora.yaml", f"model.name_or_path={QWEN05}",
                                         "--gpu-memory", "24GiB"])
    assert "fits in 24.00 GiB" in table.output and "494,032,768 total" in table.output


def test_plan_does_not_import_torch() -> None:
    import subprocess

    code = (f"import sys, cli; from typer.testing import CliRunner; "
            f"r = CliRunner().invoke(cli.app, ['plan', 'recipes/sft_lora.yaml', 'model.name_or_path={QWEN05}']); "
            f"assert r.exit_code == 0, r.output; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["plan", "recipes/sft_lora.yaml", f"model.name_or_path={tmp_path}"])
    assert result.exit_code == 2 and "has no config.json" in result.output
    result = CliRunner().invoke(cli.app, ["plan", "recipes/sft_lora.yaml", "model.name_or_path=nobody/not-cached"])
    assert result.exit_code == 2 and "hf download nobody/not-cached config.json" in result.output


def test_parse_memory() -> None:
    assert parse_memory("24GiB") == 24 * GIB and parse_memory("80GB") == 80e9 and parse_memory("24") == 24 * GIB
    with pytest.raises(ConfigError, match="--gpu-memory"):
        parse_memory("lots")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_estimate_against_measured_rss(mode: str) -> None:
    """The plan of a ~45M-parameter Llama's float32 step is within 35% of the measured peak RSS increase."""
    import subprocess

    root = Path(__file__).parent.parent
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "plan_vs_rss.py"), mode], check=True,
                         capture_output=True, text=True, cwd=root, env={**__import__("os").environ,
                                                                        "OMP_NUM_THREADS": "1"}).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert abs(result["error"]) < 0.35, result


def test_partial_finetune_ppo_models_and_strategy_option() -> None:
    a = arch(QWEN05)
    layer = (896 * 896 + 896) + 2 * (896 * 128 + 128) + 896 * 896 + 3 * 896 * 4864 + 2 * 896
    part = estimate(a, Setup(adapter="none", trainable_layers=(-1,), trainable_modules=("norm",)))
    assert part.trainable_params == layer + 896  # last layer + final norm
    base = ["plan", "recipes/ppo.yaml", f"model.name_or_path={QWEN05}", "--json"]
    ppo = CliRunner().invoke(cli.app, [*base, "objective.reward_model=" + QWEN05])
    assert ppo.exit_code == 0, ppo.output
    out = json.loads(ppo.output)
    weights = 494_032_768 * 2
    # LoRA policy: reward model (a weights copy) and a value model trained in full (weights, grads, 2 bf16 states).
    assert out["setup"]["aux"] == ["reward", "value"]
    assert out["bytes_per_device"]["models"] == weights + (weights + weights + 2 * weights)
    fsdp = json.loads(CliRunner().invoke(cli.app, [*base, "--strategy", "fsdp", "--gpus", "2"]).output)
    assert fsdp["bytes_per_device"]["weights"] == weights / 2 and fsdp["bytes_per_device"]["models"] == 5 * weights / 2
    bad = CliRunner().invoke(cli.app, [*base, "--strategy", "zero9"])
    assert bad.exit_code == 2 and "--strategy zero9" in bad.output
