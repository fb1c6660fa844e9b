"""The project's two descriptions of its environment must name the same packages, pins and Python.

environment.yml lists each package once: from conda-forge where it is there (conda names, mapped
to PyPI names below), else under `pip:`. Together the two lists must be exactly pyproject.toml's
dependencies and every extra's, with the same version constraints; a package added to both files
(in either section of environment.yml) needs no change here.
"""
import re
import tomllib
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent

# conda-forge name -> PyPI name, where they differ.
CONDA_TO_PYPI = {"ray-default": "ray"}
# On PyPI and conda-forge alike, but they must come from pip: conda-forge has no such torch builds, and
# its timm would pull in conda-forge's pytorch beside pip's torch.
PIP_ONLY = {"torch", "torchvision", "timm"}


def _name(req: str) -> tuple[str, str]:
    m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", req.strip())
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def _environment():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return conda, pip


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_matches_pyproject():
    project = _project()
    wanted = dict(_name(r) for r in project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted.update(_name(r) for r in extra)
    conda, pip = _environment()
    from_conda = [_name(r) for r in conda]
    from_conda = [(CONDA_TO_PYPI.get(name, name), spec) for name, spec in from_conda if name not in ("python", "pip")]
    from_pip = [_name(r) for r in pip if not r.startswith("-e")]
    names = [name for name, _ in from_conda + from_pip]
    twice = sorted({n for n in names if names.count(n) > 1})
    assert not twice, f"listed twice in environment.yml: {twice}"
    assert dict(from_conda + from_pip) == wanted
    assert wanted["torch"] == "==2.14.1" and wanted["torchvision"] == "==0.29.1"
    assert PIP_ONLY <= {name for name, _ in from_pip}, "torch, torchvision and timm come from pip"
    assert "-e ." in pip
    assert any(r == "pip" for r in conda)


def test_environment_python_is_the_oldest_python_pyproject_supports():
    requires = SpecifierSet(_project()["requires-python"])
    conda, _ = _environment()
    python = next(r for r in conda if _name(r)[0] == "python")
    m = re.fullmatch(r"python\s*=(\d+\.\d+)(\.\*)?", python.strip())
    assert m, f"environment.yml's python should be pinned to a minor version (python=3.X), got {python!r}"
    version = m.group(1)
    assert requires.contains(f"{version}.0"), f"environment.yml's python {version} is outside {requires}"
    lowest = [s.version for s in requires if s.operator == ">="]
    assert lowest == [version], f"requires-python {requires} and environment.yml's python={version} disagree"
