"""Bad seq2seq inputs through the real `ft validate`: a seq2seq objective on a decoder-only model,
a causal objective on an encoder-decoder, and data formats seq2seq cannot read. Each exits non-zero
without a traceback and names the recipe file:line, the key and what to use instead."""

from __future__ import annotations

import json

import pytest

from tests._bad_inputs import Case, check_case

R = "{tmp}/r.yaml"
V = ["validate", R]
# An encoder-decoder model directory as `ft validate` reads it: config.json only (no torch, no weights).
T5_CONFIG = json.dumps({"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "d_model": 64,
                        "num_layers": 2, "num_heads": 4, "d_kv": 16, "d_ff": 128, "is_encoder_decoder": True,
                        "vocab_size": 400, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0})
ON_T5 = """model:
  name_or_path: {tmp}/t5
data:
  train:
    - path: {root}/examples/data/seq2seq.jsonl
      format: prompt_completion
objective:
  kind: seq2seq
output_dir: {tmp}/out
"""

CASES = [
    Case("seq2seq-on-decoder-only", V + ["objective.kind=seq2seq"],
         ["model.name_or_path", "objective.kind seq2seq", "decoder-only model (LlamaForCausalLM)",
          "use objective.kind: sft"], {"r.yaml": "{base}"}),
    Case("sft-on-encoder-decoder", V + ["objective.kind=sft"],
         ["r.yaml:2", "model.name_or_path", "objective.kind sft", "encoder-decoder model (T5ForConditionalGeneration)",
          "use objective.kind: seq2seq"], {"r.yaml": ON_T5, "t5/config.json": T5_CONFIG}),
    Case("dpo-on-encoder-decoder", V + ["objective.kind=dpo", "data.train.0.path={root}/examples/data/preference.jsonl",
                                        "data.train.0.format=preference"],
         ["model.name_or_path", "objective.kind dpo", "encoder-decoder model"],
         {"r.yaml": ON_T5, "t5/config.json": T5_CONFIG}),
    Case("seq2seq-preference-data", V + ["data.train.0.path={root}/examples/data/preference.jsonl"],
         ["r.yaml:6", "data.train.0.format", "objective 'seq2seq' cannot train on 'preference' data"],
         {"r.yaml": ON_T5.replace("format: prompt_completion", "format: preference"), "t5/config.json": T5_CONFIG}),
    Case("seq2seq-text-data", V, ["r.yaml:6", "data.train.0.format", "cannot train on 'text' data"],
         {"r.yaml": ON_T5.replace("format: prompt_completion", "format: text"), "t5/config.json": T5_CONFIG}),
    Case("seq2seq-packing", V + ["data.packing=true"], ["data.packing", "does not pack"],
         {"r.yaml": ON_T5, "t5/config.json": T5_CONFIG}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_seq2seq_input(case: Case, tmp_path, monkeypatch) -> None:
    check_case(case, tmp_path, monkeypatch)
