"""Bad recipes, YAML, overrides, output directories, pipelines and CLI arguments through the real
CLI: a non-zero exit, no traceback, a message naming the file:line, key or path, nothing deleted."""

from __future__ import annotations

import pytest

from tests._bad_inputs import BASE, Case, check_case

R = "{tmp}/r.yaml"
V = ["validate", R]
RUN = ["run", R]
THESIS = {"thesis/thesis.tex": "chapter 1", "thesis/notes.md": "todo"}
PIPE = """model:
  name_or_path: {root}/examples/models/tiny-chat
data:
  train:
    - path: {root}/examples/data/quickstart.jsonl
      format: messages
output_dir: {tmp}/pipe
stages:
  first:
    objective:
      kind: sft
"""


def recipe(extra: str, name: str = "r.yaml") -> dict[str, str]:
    return {name: "{base}" + extra}


NON_FINITE = [(key, value) for key in ("learning_rate", "weight_decay", "max_grad_norm", "epochs", "warmup_ratio")
              for value in (".inf", "-.inf", ".nan", "1.0e+400")]
NON_FINITE_CASES = [
    Case(f"nonfinite-{key}-{value}", V, ["r.yaml:11", f"training.{key}", "not a finite number"],
         recipe(f"training:\n  {key}: {value}\n")) for key, value in NON_FINITE
] + [
    Case(f"nonfinite-alpha-{value}", V, ["r.yaml:11", "adapter.alpha", "not a finite number"],
         recipe(f"adapter:\n  alpha: {value}\n")) for value in (".inf", ".nan", "1e999")
] + [
    Case("nonfinite-in-list", V, ["r.yaml:7", "data.train.0.weight", "not a finite number"],
         {"r.yaml": BASE.replace("format: messages", "format: messages\n      weight: .nan")}),
]

OVERRIDE_CASES = [
    Case(f"override-nonfinite-{value}", V + [f"training.learning_rate={value}"],
         [f"override 'training.learning_rate={value}'", "not a finite number"], recipe(""))
    for value in (".inf", ".nan", "1e400", "-.Inf")
] + [
    Case(f"override-malformed-{i}", V + [text], [f"override '{text}'", "not valid YAML"], recipe(""))
    for i, text in enumerate(("training.learning_rate=[1,", "adapter.target_modules={a: [", "seed=]",
                              "data.train.0.path='unterminated", 'description="x'))
] + [
    Case("override-no-equals", V + ["training.max_steps"], ["override 'training.max_steps'", "KEY=VALUE"], recipe("")),
    Case("override-unknown-key", V + ["training.learning_rat=1"], ["training.learning_rat", "learning_rate"],
         recipe("")),
    Case("override-bad-index", V + ["data.train.5.path=x"], ["data.train.5.path", "out of range"], recipe("")),
    Case("override-stages-on-single", V + ["stages.a.seed=1"], ["stages.a.seed=1", "single recipe"], recipe("")),
    Case("override-stages-on-single-run", RUN + ["stages.sft.training.max_steps=1"],
         ["stages.sft.training.max_steps=1", "single recipe"], recipe(""), subprocess=True),
    Case("override-kind-none-keeps-r", V + ["adapter.kind=none", "adapter.r=4"], ["adapter.r", "unknown key"],
         recipe("")),
    Case("override-duplicate-in-value", V + ["model={a: 1, a: 2}"], ["override 'model={a: 1, a: 2}'", "duplicate"],
         recipe("")),
]

YAML_CASES = [
    Case("dup-key-same-section", V, ["r.yaml:12", "learning_rate", "line 11"],
         recipe("training:\n  learning_rate: 1.0e-4\n  learning_rate: 0.5\n")),
    Case("dup-section", V, ["r.yaml:12", "training", "line 10"],
         recipe("training:\n  learning_rate: 1.0e-4\ntraining:\n  max_steps: 3\n")),
    Case("dup-top-level", V, ["r.yaml:10", "output_dir", "line 9"], recipe("output_dir: elsewhere\n")),
    Case("dup-in-flow", V, ["r.yaml:10", "r", "line 10"], recipe("adapter: {r: 8, r: 16}\n")),
    Case("dup-in-parent", V, ["parent.yaml:11", "seed", "line 10"],
         {"parent.yaml": "{base}seed: 1\nseed: 2\n", "r.yaml": "extends: parent.yaml\n"}),
    Case("recipe-is-dir", ["validate", "{tmp}/adir"], ["{tmp}/adir", "is a directory"], dirs=["adir"]),
    Case("run-recipe-is-dir", ["run", "{tmp}/adir"], ["{tmp}/adir", "is a directory"], dirs=["adir"],
         subprocess=True),
    Case("recipe-missing", ["validate", "{tmp}/nope.yaml"], ["nope.yaml", "not found"]),
    Case("recipe-not-mapping", V, ["r.yaml:1", "mapping"], {"r.yaml": "- a\n- b\n"}),
    Case("recipe-invalid-yaml", V, ["r.yaml:", "invalid YAML"], {"r.yaml": "model: [\n"}),
    Case("recipe-not-utf8", V, ["r.yaml", "UTF-8"], {}),  # bytes written in the test below
    Case("kind-none-with-r", V, ["r.yaml:10", "adapter.r", "unknown key"], recipe("adapter: {kind: none, r: 8}\n")),
    Case("kind-none-with-target-modules", V, ["r.yaml:12", "adapter.target_modules"],
         recipe("adapter:\n  kind: none\n  target_modules: [q_proj]\n")),
    Case("child-kind-none-with-r", V, ["r.yaml:2", "adapter.r"],
         {"parent.yaml": "{base}adapter: {kind: lora, r: 4}\n", "r.yaml": "extends: parent.yaml\n"
          "adapter: {kind: none, r: 8}\n"}),
    Case("lora-with-quant-type", V, ["r.yaml:10", "adapter.quant_type"],
         recipe("adapter: {kind: lora, quant_type: nf4}\n")),
    Case("objective-key-of-other-kind", V, ["r.yaml:", "objective.beta"],
         {"r.yaml": BASE.replace("kind: sft", "kind: sft\n  beta: 0.1")}),
    Case("extends-missing", V, ["r.yaml:1", "extends", "not found"], {"r.yaml": "extends: nothere.yaml\n"}),
    Case("extends-circular", V, ["extends", "circular"], {"r.yaml": "extends: r.yaml\n"}),
]

RANGE_CASES = [
    Case("seed-negative", V + ["seed=-1"], ["seed", "between 0 and 4294967295"], recipe("")),
    Case("seed-huge", V + ["seed=1e20"], ["seed"], recipe("")),
    Case("seed-too-big", V, ["r.yaml:10", "seed", "4294967295"], recipe("seed: 4294967296\n")),
    Case("lora-rank-huge", V, ["r.yaml:12", "adapter.r", "at most 4096"], recipe("adapter:\n  kind: lora\n  r: 1000000\n")),
    Case("lora-rank-zero", V, ["r.yaml:12", "adapter.r"], recipe("adapter:\n  kind: lora\n  r: 0\n")),
    Case("lora-alpha-huge", V, ["r.yaml:12", "adapter.alpha"], recipe("adapter:\n  kind: lora\n  alpha: 1.0e+300\n")),
    Case("lr-scheduler-unknown", V, ["r.yaml:11", "training.lr_scheduler", "cosine"],
         recipe("training:\n  lr_scheduler: cosin\n")),
    Case("optimizer-unknown", V, ["r.yaml:11", "training.optimizer", "adamw_torch"],
         recipe("training:\n  optimizer: adam\n")),
    Case("report-to-unknown", V, ["r.yaml:11", "training.report_to.0", "tensorboard"],
         recipe("training:\n  report_to: [wandbb]\n")),
    Case("layers-empty", V, ["r.yaml:12", "adapter.layers", "empty"], recipe("adapter:\n  kind: lora\n  layers: []\n")),
    Case("layers-duplicate", V, ["r.yaml:12", "adapter.layers", "twice"], recipe("adapter:\n  kind: lora\n  layers: [0, 0]\n")),
    Case("layers-not-list", V, ["r.yaml:12", "adapter.layers"], recipe("adapter:\n  kind: lora\n  layers: first\n")),
    Case("layers-out-of-range", V, ["r.yaml:12", "adapter.layers", "[5]", "0..1"],
         recipe("adapter:\n  kind: lora\n  layers: [5]\n")),
    Case("layers-negative-out-of-range", V, ["r.yaml:12", "adapter.layers", "[-3]"],
         recipe("adapter:\n  kind: lora\n  layers: [-3]\n")),
    Case("trainable-layers-out-of-range", V, ["r.yaml:12", "adapter.trainable_layers", "[7]"],
         recipe("adapter:\n  kind: none\n  trainable_layers: [7]\n")),
    Case("trainable-layers-duplicate", V, ["r.yaml:12", "adapter.trainable_layers", "twice"],
         recipe("adapter:\n  kind: none\n  trainable_layers: [1, 1]\n")),
    Case("target-modules-match-nothing", V, ["r.yaml:12", "adapter.target_modules", "q_proj"],
         recipe("adapter:\n  kind: lora\n  target_modules: [query_key_value]\n")),
    Case("target-modules-one-bad", V, ["r.yaml:12", "adapter.target_modules", "qproj"],
         recipe("adapter:\n  kind: lora\n  target_modules: [q_proj, qproj]\n")),
    Case("run-device-cuda-no-gpu", RUN + ["training.device=cuda"], ["training.device", "cuda"], recipe(""),
         subprocess=True),
    Case("run-fp16-on-cpu", RUN + ["training.precision=fp16"], ["training.precision fp16"], recipe("")),
]

OUTPUT_CASES = [
    Case("overwrite-thesis", RUN + ["output_dir={tmp}/thesis", "--overwrite"],
         ["{tmp}/thesis", "not a run directory"], {**recipe(""), **THESIS},
         keep=["thesis/thesis.tex", "thesis/notes.md"], subprocess=True),
    Case("overwrite-thesis-inprocess", RUN + ["output_dir={tmp}/thesis", "--overwrite"],
         ["{tmp}/thesis", "refuses"], {**recipe(""), **THESIS}, keep=["thesis/thesis.tex"]),
    Case("overwrite-cwd", RUN + ["output_dir=.", "--overwrite"], ["current directory"], recipe(""),
         keep=["r.yaml"], subprocess=True),
    Case("overwrite-parent-of-cwd", RUN + ["output_dir=..", "--overwrite"], ["current directory"], recipe(""),
         keep=["r.yaml"]),
    Case("overwrite-home", RUN + ["output_dir={tmp}/home", "--overwrite"], ["home directory"],
         {**recipe(""), "home/.ft-run": "", "home/mail.txt": "x"}, keep=["home/mail.txt"]),
    Case("overwrite-dir-holding-recipe", ["run", "{tmp}/proj/r.yaml", "output_dir={tmp}/proj", "--overwrite"],
         ["{tmp}/proj/r.yaml"], {"proj/r.yaml": "{base}", "proj/manifest.json": "{}"}, keep=["proj/r.yaml"]),
    Case("overwrite-nested-thesis", RUN + ["output_dir={tmp}/work/thesis", "--overwrite"], ["not a run directory"],
         {**recipe(""), "work/thesis/ch1/a.tex": "x"}, keep=["work/thesis/ch1/a.tex"]),
    Case("overwrite-single-file-dir", RUN + ["output_dir={tmp}/d", "--overwrite"], ["{tmp}/d"],
         {**recipe(""), "d/data.csv": "a,b"}, keep=["d/data.csv"]),
    Case("output-dir-is-file", RUN + ["output_dir={tmp}/afile"], ["{tmp}/afile", "is a file"],
         {**recipe(""), "afile": "x"}, keep=["afile"]),
    Case("output-dir-under-file", RUN + ["output_dir={tmp}/afile/run"], ["{tmp}/afile", "which is a file"],
         {**recipe(""), "afile": "x"}, keep=["afile"]),
    Case("output-dir-is-file-validate", V + ["output_dir={tmp}/afile"], ["output_dir", "is a file"],
         {**recipe(""), "afile": "x"}),
    Case("output-dir-under-file-validate", V + ["output_dir={tmp}/afile/x"], ["output_dir", "which is a file"],
         {**recipe(""), "afile": "x"}),
    Case("run-existing-no-flag", RUN, ["{tmp}/out", "already holds a run", "--overwrite"],
         {**recipe(""), "out/manifest.json": "{}"}, keep=["out/manifest.json"]),
]

PIPELINE_CASES = [
    Case("pipeline-overwrite-thesis", RUN + ["--overwrite"], ["{tmp}/pipe", "not a run directory"],
         {"r.yaml": PIPE, "pipe/thesis.tex": "x"}, keep=["pipe/thesis.tex"], subprocess=True),
    Case("pipeline-overwrite-cwd", RUN + ["output_dir=.", "--overwrite"], ["current directory"],
         {"r.yaml": PIPE}, keep=["r.yaml"]),
    Case("pipeline-output-is-file", RUN + ["output_dir={tmp}/afile"], ["{tmp}/afile", "is a file"],
         {"r.yaml": PIPE, "afile": "x"}, keep=["afile"]),
    Case("pipeline-dup-stage", V, ["r.yaml:12", "first", "line 9"], {"r.yaml": PIPE + "  first:\n    seed: 1\n"}),
    Case("pipeline-nonfinite-stage", V, ["r.yaml:13", "learning_rate", "not a finite number"],
         {"r.yaml": PIPE + "    training:\n      learning_rate: .inf\n"}),
    Case("pipeline-stage-kind-none-r", V, ["r.yaml:12", "stages.first.adapter.r"],
         {"r.yaml": PIPE + "    adapter: {kind: none, r: 8}\n"}),
    Case("pipeline-stage-seed", V, ["r.yaml:12", "seed"], {"r.yaml": PIPE + "    seed: -5\n"}),
    Case("pipeline-unknown-stage-ref", V, ["r.yaml:", "no earlier stage"],
         {"r.yaml": PIPE + "  second:\n    objective: {kind: sft}\n    model: {name_or_path: '${stages.nope.output}'}\n"}),
    Case("pipeline-stage-output-dir", V, ["stages.first.output_dir"], {"r.yaml": PIPE + "    output_dir: x\n"}),
    Case("pipeline-override-nonfinite", V + ["stages.first.training.learning_rate=.nan"], ["not a finite number"],
         {"r.yaml": PIPE}),
    Case("pipeline-rerun-unknown", RUN + ["--rerun", "nosuch"], ["nosuch"], {"r.yaml": PIPE}),
    Case("pipeline-no-output-dir", V, ["output_dir"], {"r.yaml": PIPE.replace("output_dir: {tmp}/pipe\n", "")}),
]

CLI_CASES = [
    Case("resume-and-overwrite", RUN + ["--resume", "--overwrite"], ["--resume", "--overwrite"], recipe(""),
         subprocess=True),
    Case("nproc-negative", RUN + ["--nproc", "-1"], ["--nproc", "-1"], recipe("")),
    Case("nproc-zero", RUN + ["--nproc", "0"], ["--nproc", "0"], recipe("")),
    Case("nproc-not-int", RUN + ["--nproc", "two"], ["--nproc"], recipe("")),
    Case("unknown-option", RUN + ["--overwrit"], ["--overwrit"], recipe("")),
    Case("run-missing-recipe", ["run", "{tmp}/missing.yaml"], ["missing.yaml", "not found"]),
    Case("stage-on-single-recipe", ["data", "preview", R, "--stage", "x"], ["--stage x", "single recipe"],
         recipe("")),
]

CASES = NON_FINITE_CASES + OVERRIDE_CASES + YAML_CASES + RANGE_CASES + OUTPUT_CASES + PIPELINE_CASES + CLI_CASES


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 75
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, monkeypatch) -> None:
    if case.id == "recipe-not-utf8":
        (tmp_path / "r.yaml").write_bytes(b"model: \xff\xfe\n")
    check_case(case, tmp_path, monkeypatch)
