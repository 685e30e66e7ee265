"""launch/colab.ipynb executes top to bottom (nbclient, a real Jupyter kernel) against the small
version of its pipeline: the cell after the `parameters` cell points it at a copy of the small
pipeline's workdir with its last stage removed, so the notebook's own run does that stage and
the report, shows the figures and chats with the result."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import ROOT

import pipeline_small as small

pytestmark = pytest.mark.slow
NOTEBOOK = ROOT / "launch" / "colab.ipynb"


def test_the_colab_notebook_runs_top_to_bottom(small_pipeline, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    wd_ref, _, cache = small_pipeline
    wd = tmp_path / "chatgpt"
    shutil.copytree(wd_ref, wd)
    shutil.rmtree(wd / "eval_ppo")
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    params = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    assert 'CONFIG = "configs/chatgpt_tiny.py"' in nb.cells[params[0]].source
    nb.cells.insert(params[0] + 1, nbformat.v4.new_code_cell(
        f"WORKDIR = {str(wd)!r}\nOVERRIDES = {small.flags(compile_cache=cache)!r}"))
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # the kernel: one CPU device, as a user's
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    outputs = {i: "".join(o.get("text", "") for o in c.get("outputs", []))
               for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    text = "\n".join(outputs.values())
    assert "stage 8 of 8: eval_ppo (eval)" in text
    assert "stage 7 of 8: eval_sft: done earlier" in text
    assert "ppo over sft (judge judge)" in text
    images = sum(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
                 for c in nb.cells for o in c.get("outputs", []))
    assert images == len(os.listdir(wd / "report")) == 6
    assert "is a pipeline: using its stage ppo" in text and "model> " in text
