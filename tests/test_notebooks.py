"""Notebook conventions: one papermill parameters cell, documented and typed, thin cells, and
profile YAML files that match the library's profiles."""
import json
from pathlib import Path

import papermill
import pytest
import yaml

from stitchlib.experiments import PROFILES

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = {"01_connectivity": "connectivity"}


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
    experiment = PROFILES[NOTEBOOKS[name]]
    assert set(experiment["smoke"]) | {"profile", "device"} <= set(params)
    for p in params.values():
        assert p["inferred_type_name"] != "None" and p["help"], p["name"]


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_profile_yaml_matches_the_library(name, profile):
    values = yaml.safe_load((ROOT / "notebooks" / "params" / f"{name}.{profile}.yaml").read_text())
    params = papermill.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))
    assert values["profile"] == profile
    assert set(values) <= set(params), set(values) - set(params)
    for key, value in values.items():
        if key in PROFILES[NOTEBOOKS[name]][profile]:
            assert value == PROFILES[NOTEBOOKS[name]][profile][key], key
