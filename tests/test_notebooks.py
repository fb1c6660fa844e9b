"""Notebook conventions: one papermill parameters cell, documented and typed, thin cells, and
profile YAML files that match the library's profiles."""
import json
import os
import subprocess
import sys
from pathlib import Path

import papermill
import pytest
import yaml

from stitchlib.experiments import EXPERIMENTS, PROFILES
from stitchlib.experiments.params import RUN_OPTIONS

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = {e.notebook: e.name for e in EXPERIMENTS.values()}


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_structure(name):
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    cells = nb["cells"]
    tagged = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1
    assert not any("injected-parameters" in c["metadata"].get("tags", []) for c in cells)
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any(line.lstrip().startswith(("def ", "class ")) for c in code for line in c["source"])
    checked = [c for c in code if "# NBVAL_CHECK_OUTPUT" in "".join(c["source"])]
    assert len(checked) == 1 and checked[0]["outputs"], "the checked summary needs stored outputs"
    assert cells[0]["cell_type"] == "markdown" and "Claim" in "".join(cells[0]["source"])


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_parameters_are_typed_and_documented(name):
    params = papermill.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))
    declared = EXPERIMENTS[NOTEBOOKS[name]].Params.names()
    assert set(declared) | set(RUN_OPTIONS) == set(params)
    for p in params.values():
        assert p["inferred_type_name"] != "None" and p["help"], p["name"]


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
@pytest.mark.parametrize("profile", PROFILES)
def test_profile_yaml_matches_the_library(name, profile):
    values = yaml.safe_load((ROOT / "notebooks" / "params" / f"{name}.{profile}.yaml").read_text())
    params = papermill.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))
    assert values["profile"] == profile
    assert set(values) <= set(params), set(values) - set(params)
    for key, value in values.items():
        if key not in RUN_OPTIONS:
            assert value == EXPERIMENTS[NOTEBOOKS[name]].Params.default(key, profile), key


def test_the_users_papermill_command_works_from_any_directory(tmp_path):
    """`papermill 04_more_is_better.ipynb out.ipynb -p samples N` from a directory that is neither
    the repository nor notebooks/: the store and the figures land where the environment says, and
    `samples` sets the size of the "more samples" bottom. It runs on the Ray executor started
    inside the notebook's kernel. Tiny sizes keep it short."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, STITCHLIB_STORE=str(tmp_path / "store"), STITCHLIB_FIGURES=str(tmp_path / "figures"))
    tiny = dict(width=0.0625, train_samples=512, test_samples=256, epochs=1.0, fewer_samples=256, top_samples=512,
                top_epoch=0.5, stitch_samples=256, stitch_epochs=0.5, ls_samples=256, cka_samples=128, device="cpu")
    args = [a for k, v in tiny.items() for a in ("-p", k, str(v))]
    args += ["-y", "widths: [0.03125, 0.0625]", "-y", "checkpoint_epochs: [0.5, 1.0]"]
    papermill = Path(sys.executable).with_name("papermill")
    subprocess.run([str(papermill), str(ROOT / "notebooks" / "04_more_is_better.ipynb"), "out.ipynb",
                    "-p", "samples", "1024", "-p", "executor", "ray", *args, "--log-level", "WARNING"],
                   cwd=elsewhere, env=env, check=True, timeout=600)
    out = json.loads((elsewhere / "out.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in out["cells"] for o in c.get("outputs", []))
    assert "samples            1024" in text and "1,024 samples into 512" in text
    assert "executor   ray (1 thread per task)" in text
    assert (tmp_path / "figures" / "smoke" / "fig2c_samples.png").exists()
    assert (tmp_path / "figures" / "smoke" / "04_more_is_better.csv").exists()
    assert (tmp_path / "store" / "model").is_dir()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["out.ipynb"]  # nothing written where it ran


def test_the_readme_results_are_rendered_from_the_committed_tables():
    """No measured number is typed into the README's results: the block is what
    `python -m stitchlib readme` renders from results/smoke/."""
    from stitchlib.report import render_readme

    readme = ROOT / "README.md"
    assert render_readme(readme, ROOT / "results" / "smoke") == readme.read_text(), \
        "README.md is out of date with results/smoke/: run `python -m stitchlib readme`"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_committed_notebook_verdicts_match_the_committed_tables(name):
    """The verdicts a notebook shows (and nbval compares) are those of results/smoke/, which the
    README renders: notebook, tables and README come from one run."""
    import pandas as pd

    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    checked = next(c for c in nb["cells"] if "# NBVAL_CHECK_OUTPUT" in "".join(c["source"]))
    shown = "".join("".join(o.get("text", "")) for o in checked["outputs"])
    claims = pd.read_csv(ROOT / "results" / "smoke" / f"{name}_claims.csv", keep_default_na=False)
    lines = [line for line in shown.splitlines()[1:] if line.strip()]
    assert len(lines) == len(claims)
    for line, (_, c) in zip(lines, claims.iterrows()):
        assert line.rstrip().endswith(c["verdict"]) and c["model"] in line and c["threshold"] in line, line


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_texts_carry_no_measured_numbers(name):
    """Markdown cells hold the claim and the paper's numbers, never a measurement typed by hand:
    no runtime in seconds or minutes, no 'measured' figure."""
    import re

    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert not re.search(r"\d+(\.\d+)?\s(s|min)\b|[Mm]easured at smoke", text), name
