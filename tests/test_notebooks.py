"""The notebooks execute headless and offline on CPU with the shipped tiny model: the parameters
cell is replaced, every cell runs, and the cells' own asserts check what they show."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._runs import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
TINY_CHAT = ROOT / "examples" / "models" / "tiny-chat"


def _execute(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "one parameters cell"
    cells[0].source = f"MODEL = {str(TINY_CHAT)!r}\nMAX_STEPS = 2\nOUTPUT = {str(tmp_path / 'out')!r}"
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    return nb


def _outputs(nb: object) -> str:
    return "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.mark.slow
def test_quickstart_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = _execute("quickstart", tmp_path, monkeypatch)
    shown = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert shown, "result.plot() shows the loss plot inline"
    assert "loss " in _outputs(nb) and (tmp_path / "out" / "sft" / "final").is_dir()


@pytest.mark.slow
def test_alignment_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = _execute("alignment", tmp_path, monkeypatch)
    assert "['sft', 'dpo']" in _outputs(nb)
    assert (tmp_path / "out" / "pipeline" / "dpo" / "final").is_dir()


@pytest.mark.slow
def test_post_training_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _execute("post_training", tmp_path, monkeypatch)
