"""A non-editable install works away from the repository.

Builds the wheel, checks that it ships the notebooks, installs it (not editable) into a fresh virtual
environment and uses it from a directory that is neither the repository nor the environment: the
package comes from the environment, every default folder is the per-user one (platformdirs, under a
temporary HOME/XDG_*), `python -m stitchlib notebooks DIR` writes the notebooks, a tiny plan runs
and stores its results in the per-user folder, and nothing is written into the environment.
50-60 s on a 2-core CPU, most of it the first decode of the CIFAR-10 archive and the tiny run.
"""
import email.parser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from stitchlib import data

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.relative_to(ROOT / "notebooks") for p in [
    *(ROOT / "notebooks").glob("[0-9]*.ipynb"), *(ROOT / "notebooks").glob("params/*.yaml"),
    ROOT / "notebooks" / "sanitize.cfg"])
# The CIFAR-10 archive, found as tests/test_data.py finds it (conftest.py's load_dataset("cifar10")
# finds it the same way in a checkout; an installed copy only through the variable).
ARCHIVE = Path(os.environ.get(data.ARCHIVE_ENV) or data.REPO_ROOT.parent / "shared" / "data" / data.ARCHIVE_NAME)
# tests/test_plans.py's tiny connectivity plan: 4 small ResNet-18s, no extra architectures, ~15 s.
TINY = ("{widths: [0.0625], seeds: [0, 1, 2, 3], train_samples: 256, test_samples: 128, epochs: 0.5, "
        "stitch_samples: 128, stitch_epochs: 0.0, ls_samples: 128, cka_samples: 64, architectures: {}, "
        "disjoint: false}")


def _run(args, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kw)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built without network from a copy of the sources: building in the checkout would
    write build/ and *.egg-info there (shared with whoever works in it), and a stale build/ could
    carry files the sources no longer have."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "*.pyc")
    for name in ("stitchlib", "notebooks"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for f in [ROOT / "pyproject.toml", ROOT / "README.md", *ROOT.glob("LICEN[CS]E*")]:
        shutil.copy2(f, src / f.name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", tmp / "dist", src])
    (found,) = (tmp / "dist").glob("stitchlib-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> dict:
    """A fresh virtual environment with the wheel installed, not editable.

    Installing the dependencies (torch alone is gigabytes) would take minutes. Instead a .pth file in
    the fresh environment's site-packages names the site-packages of the environment running this
    test, so those already-installed packages are importable there: Python appends that folder to
    sys.path after the fresh site-packages (and processes no .pth file inside it, so the checkout's
    editable install stays invisible). The wheel's own files come from the fresh environment.
    pip, too, is the running environment's, run by the fresh interpreter (the environment is made
    --without-pip, which is also faster), so it installs into the fresh environment."""
    where = tmp_path_factory.mktemp("venv") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", where])
    python = where / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (purelib / "_stitchlib_test_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel])
    return dict(root=where, python=python, purelib=purelib)


@pytest.fixture
def user(tmp_path) -> dict:
    """An environment with HOME and the XDG folders in tmp, no STITCHLIB_* variable but the CIFAR-10
    archive's, and a working directory that is neither the repository nor the virtual environment."""
    home = tmp_path / "home"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STITCHLIB_", "XDG_")) and k not in drop}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "xdg-data"), XDG_CACHE_HOME=str(home / "xdg-cache"),
               XDG_CONFIG_HOME=str(home / "xdg-config"), PYTHONNOUSERSITE="1",
               # No bytecode written anywhere, so that any file that appears in the environment is a bug.
               PYTHONDONTWRITEBYTECODE="1", TQDM_DISABLE="1")
    if ARCHIVE.is_file():
        env[data.ARCHIVE_ENV] = str(ARCHIVE)
    return dict(env=env, cwd=cwd, dir=home / "xdg-data" / "stitchlib")


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(z.read(name).decode())
    return metadata.get_all("Requires-Dist") or []


def test_the_wheel_ships_the_notebooks_and_their_parameters(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    shipped = sorted(Path(n).relative_to("stitchlib/_notebooks") for n in names
                     if n.startswith("stitchlib/_notebooks/"))
    assert shipped == NOTEBOOKS
    assert len([p for p in NOTEBOOKS if p.suffix == ".ipynb"]) == 5
    assert len([p for p in NOTEBOOKS if p.parent.name == "params"]) == 15
    assert "stitchlib/locations.py" in names and "stitchlib/experiments/core.py" in names
    assert not any(n.startswith(("tests/", "notebooks/", "runs/", "data/", "figures/")) for n in names)
    assert "platformdirs" in _requirements(wheel)


CHECK = textwrap.dedent("""
    import json, sys
    from importlib.metadata import PackageNotFoundError, distribution, version

    import stitchlib
    from stitchlib import locations

    problems = []
    for line in json.loads(sys.argv[1]):
        try:
            from packaging.requirements import Requirement
        except ImportError:  # no packaging: only check that the distribution is there
            name, spec, marker = line.split(";")[0].split("=")[0].split(">")[0].split("<")[0].strip(), None, None
        else:
            req = Requirement(line)
            name, spec, marker = req.name, req.specifier, req.marker
        if marker is not None and not marker.evaluate({"extra": ""}):
            continue  # an extra's
        try:
            have = version(name)
        except PackageNotFoundError:
            problems.append(f"{line}: not installed")
            continue
        if spec is not None and not spec.contains(have, prereleases=True):
            problems.append(f"{line}: {have} installed")
    print(json.dumps(dict(
        file=stitchlib.__file__, dist=str(distribution("stitchlib").locate_file("stitchlib")), problems=problems,
        checkout=str(locations.checkout_root()), user=str(locations.user_dir()), store=str(locations.store_dir()),
        figures=str(locations.figures_dir()), data=str(locations.data_dir()), weights=str(locations.weights_dir()),
        notebooks=str(locations.notebooks_dir()))))
""")


def test_an_installed_copy_uses_per_user_folders(venv, wheel, user):
    before = _files(venv["root"])
    py = venv["python"]
    run = dict(cwd=user["cwd"], env=user["env"])
    found = json.loads(_run([py, "-c", CHECK, json.dumps(_requirements(wheel))], **run).stdout.splitlines()[-1])
    assert found["problems"] == []
    package = venv["purelib"] / "stitchlib"
    assert Path(found["file"]) == package / "__init__.py"  # the fresh environment's, not the checkout's
    assert Path(found["dist"]) == package
    assert found["checkout"] == "None"
    here = user["dir"]
    assert Path(found["user"]) == here
    assert {k: Path(found[k]) for k in ("store", "figures", "data", "weights")} == dict(
        store=here / "store", figures=here / "figures", data=here / "data", weights=here / "data" / "weights")
    assert Path(found["notebooks"]) == package / "_notebooks"

    # The notebooks and their profiles, copied out of the installed package.
    copied = _run([py, "-m", "stitchlib", "notebooks", "nb"], **run)
    target = user["cwd"] / "nb"
    assert sorted(p.relative_to(target) for p in target.rglob("*") if p.is_file()) == NOTEBOOKS
    assert all((target / p).read_bytes() == (ROOT / "notebooks" / p).read_bytes() for p in NOTEBOOKS)
    assert f"{len(NOTEBOOKS)} files written to {target}" in copied.stdout

    # The commands that write into a checkout say so instead of writing beside the package.
    refused = subprocess.run([py, "-m", "stitchlib", "readme"], capture_output=True, text=True, timeout=120, **run)
    assert refused.returncode == 2 and "source checkout" in refused.stderr
    assert _files(venv["root"]) == before  # nothing written into the environment


@pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"CIFAR-10 JPEG archive not found at {ARCHIVE}")
def test_an_installed_copy_runs_a_plan_into_the_per_user_store(venv, user):
    before = _files(venv["root"])
    done = _run([venv["python"], "-m", "stitchlib", "run", "connectivity", "--executor", "serial", "--device", "cpu",
                 "--no-plots", "-y", TINY], cwd=user["cwd"], env=user["env"])
    here = user["dir"]
    assert f"store {here / 'store'}" in done.stdout
    assert list((here / "store" / "model").glob("*.pt")), "no model stored in the per-user store"
    assert (here / "figures" / "smoke" / "01_connectivity_claims.csv").is_file()
    assert (here / "figures" / "smoke" / "run.json").is_file()
    assert list((here / "data" / "cache").glob("cifar10-*.pt"))  # the decoded dataset, per user too
    assert list(user["cwd"].iterdir()) == []  # nothing where it ran
    assert _files(venv["root"]) == before  # nor in the environment (site-packages included)
