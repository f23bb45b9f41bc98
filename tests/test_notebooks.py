"""The notebooks are generated from notebooks/_build.py (so they diff as text); the committed
.ipynb files must match it. CI executes them top to bottom with nbmake (`pytest --nbmake notebooks`)."""

from __future__ import annotations

import importlib.util
import os

import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_notebooks_match_their_sources():
    spec = importlib.util.spec_from_file_location("nb_build", os.path.join(ROOT, "notebooks", "_build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    built = mod.build()
    assert set(built) == {"01_explore_store.ipynb", "02_run_on_a_cluster.ipynb", "03_reconstruction.ipynb"}
    for name, nb in built.items():
        committed = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
        assert [c.source for c in committed.cells] == [c.source for c in nb.cells], f"{name} is stale: python notebooks/_build.py"
        assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")  # committed without outputs
