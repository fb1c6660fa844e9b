"""The shell commands the README and the notebooks show run as written, up to the point where work
would start: examples cannot rot.

Every command in the README's `sh` blocks, and every inline `papermill ...`, `python -m stitchlib ...`
and `make ...` of the README and of the notebooks' text, is either run here or named in SKIPPED with
the reason. Run means: `python -m stitchlib plan|run ... --check` (arguments, parameters, executor
checked; stops before loading data), `readme --check`, `notebooks` into a temporary folder, papermill with `--prepare-only` and the parameters it injected
then checked by the notebook's own setup check, `make -n` for make (the target exists; nothing runs).
"""
import datetime
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from stitchlib.__main__ import main as stitchlib_main
from stitchlib.experiments import EXPERIMENTS
from stitchlib.experiments.core import check_setup

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))

# What is not run, and why: each entry is a prefix of the command as written.
SKIPPED = {
    "#SBATCH": "a Slurm directive",
    "export STITCHLIB_STORE=/shared": "a Slurm job's environment (paths on a cluster)",
    "nodes=(": "Slurm: the job's node list",
    "srun ": "Slurm: starts Ray on cluster nodes",
    "sleep ": "Slurm: waits for Ray to start",
    "python bench/gpu_throughput.py": "a GPU benchmark: it measures, it has nothing to check first",
    "#!/bin/bash": "a script's first line",
    "pip install .": "installs into the environment: tests/test_install.py installs the wheel into a fresh one",
    "cd ~/stitching && jupyter lab": "starts a server: tests/test_browser.py runs JupyterLab headless",
}


def _commands_in_blocks(text: str):
    """(command, cwd) of every line of every sh block; `cd` moves the cwd for the block's rest."""
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        cwd = ROOT
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()  # a trailing comment
            if not line:
                continue
            if re.fullmatch(r"cd \S+", line):
                cwd = cwd / line[3:].strip()
                continue
            yield line, cwd


def _inline_commands(text: str, cwd: Path):
    for span in re.findall(r"`([^`\n]+)`", text):
        if re.match(r"(papermill|python -m stitchlib|make) ", span):
            yield span, cwd


def _all_commands():
    readme = (ROOT / "README.md").read_text()
    found = list(_commands_in_blocks(readme)) + list(_inline_commands(readme, ROOT))
    for nb in NOTEBOOKS:
        cells = json.loads(nb.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        # The notebooks say to run their commands from notebooks/.
        found += list(_inline_commands(text.replace("\n", " "), ROOT / "notebooks"))
    return list(dict.fromkeys(found))


COMMANDS = _all_commands()


def _argv(command: str) -> list[str]:
    """The command's words as the shell would give them, for the few expansions the README uses."""
    command = command.replace("$(date +%F)", datetime.date.today().isoformat())
    return shlex.split(os.path.expandvars(command.replace("$head", "node-0")))


def test_the_readme_and_notebooks_show_commands():
    kinds = {c.split()[0] for c, _ in COMMANDS}
    assert {"papermill", "python", "make"} <= kinds
    assert len(COMMANDS) >= 15


@pytest.mark.parametrize("command,cwd", COMMANDS, ids=[c for c, _ in COMMANDS])
def test_command_runs_as_written(command, cwd, tmp_path, monkeypatch, capsys):
    reason = next((why for prefix, why in SKIPPED.items() if command.startswith(prefix)), None)
    if reason:
        pytest.skip(reason)
    if "<" in command:  # a template (`python -m stitchlib plan <notebook>`): fill in each notebook
        commands = [command.replace("<notebook>", nb.stem).replace("<notebook|all>", "all") for nb in NOTEBOOKS]
        assert all("<" not in c for c in commands), f"an unknown placeholder in {command!r}"
    else:
        commands = [command]
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("STITCHLIB_STORE", str(tmp_path / "store"))  # nothing reaches the real store
    monkeypatch.setenv("STITCHLIB_FIGURES", str(tmp_path / "figures"))
    for one in commands:
        argv = _argv(one)
        if argv[0] == "papermill":
            _papermill(argv[1:], tmp_path)
        elif argv[:3] == ["python", "-m", "stitchlib"]:
            args = argv[3:]
            if args[0] in ("run", "plan", "readme"):
                args.append("--check")  # stop before work; readme: only compare
            elif args[0] == "notebooks":  # cheap: really copy, into a folder of the test's
                args = ["notebooks", str(tmp_path / "notebooks"), *args[2:]]
            readme = (ROOT / "README.md").read_text()
            code = stitchlib_main(args)
            assert code == 0, f"{one!r} exited {code}: {capsys.readouterr().err}"
            assert (ROOT / "README.md").read_text() == readme
        elif argv[0] == "make":
            done = subprocess.run(["make", "-n", *argv[1:]], cwd=cwd, capture_output=True, text=True)
            assert done.returncode == 0, f"{one!r}: {done.stderr}"
        else:
            pytest.fail(f"no way to check {one!r}: run it here or add it to SKIPPED with the reason")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.pt")), "work was done"


def _papermill(args: list[str], tmp_path: Path) -> None:
    """papermill's own command line, in this process, with --prepare-only (parameters injected, no
    cell run); then the parameters it injected go through the notebook's setup check."""
    from click.testing import CliRunner
    from papermill.cli import papermill as cli

    if "--help-notebook" in args:
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0 and "Parameters inferred" in result.output, result.output
        return
    notebook, output = args[0], tmp_path / "out.ipynb"
    result = CliRunner().invoke(cli, [notebook, str(output), *args[2:], "--prepare-only"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    cells = json.loads(output.read_text())["cells"]
    namespace = {}
    for tag in ("parameters", "injected-parameters"):
        for cell in cells:
            if tag in cell["metadata"].get("tags", []):
                exec("".join(cell["source"]), namespace)
    name = next(e for e in EXPERIMENTS.values() if e.notebook == Path(notebook).stem).name
    given = {k: v for k, v in namespace.items() if not k.startswith("__")}
    check_setup(name, reach_cluster=False, **given)  # a README's cluster address is an example


def test_the_check_catches_a_list_passed_with_p(tmp_path, monkeypatch):
    """The example the notebooks once showed: papermill's -p passes '[0.2, 1.0]' as text, and the
    check says to use -y; the -y form passes."""
    monkeypatch.chdir(ROOT / "notebooks")
    with pytest.raises((TypeError, ValueError), match="YAML"):
        _papermill(["03_label_noise.ipynb", "out.ipynb", "-p", "noise", "[0.2, 1.0]"], tmp_path)
    _papermill(["03_label_noise.ipynb", "out.ipynb", "-y", "noise: [0.2, 1.0]"], tmp_path)
    assert stitchlib_main(["run", "03", "-p", "noise", "[0.2, 1.0]", "--check"]) == 2
    assert stitchlib_main(["run", "03", "-y", "noise: [0.2, 1.0]", "--check"]) == 0
