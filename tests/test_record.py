"""The record beside every table and figure (`stitchlib.record`), the profile column of the CSVs, and
run.json sharing the record's fields. Nothing here trains: the run's tables are made up, written
through the same `finish` and `check_claims` the experiments use."""
import dataclasses
import datetime
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import stitchlib  # noqa: E402
from stitchlib import data as D  # noqa: E402
from stitchlib import record  # noqa: E402
from stitchlib.claims import CLAIM_COLUMNS  # noqa: E402
from stitchlib.experiments import core  # noqa: E402
from stitchlib.plotting import save_figure  # noqa: E402
from stitchlib.store import code_version  # noqa: E402
from stitchlib.tables import write_csv  # noqa: E402
from stitchlib.training import device_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(widths=[0.0625], seeds=[0, 1, 2, 3], train_samples=512, test_samples=256, epochs=1.0, stitch_samples=256,
            stitch_epochs=0.5, ls_samples=256, cka_samples=128, architectures={}, disjoint=False)
FIELDS = {"files", "written", "record_format", "experiment", "notebook", "profile", "params", "seeds", "seed_pairs",
          "executor", "numerics", "device", "device_name", "dataset", "store", "figures", "started", "python", "torch",
          "torchvision", "cuda", "cudnn", "platform", "cpu", "cpus", "cpu_flags", "cpu_capability", "gpus", "stitchlib",
          "code_version", "git"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real setup (planned, data loaded; nothing trained) writing into its own folders."""
    where = tmp_path_factory.mktemp("record")
    return stitchlib.setup("connectivity", device="cpu", store=str(where / "store"), figures_dir=str(where / "figures"),
                           executor="serial", **TINY)


def fake_results(s):
    """The tidy rows of a connectivity run (two seed pairs, a trained and a random bottom, four
    cuts) with made-up numbers, through `finish` as an experiment makes them."""
    rows = []
    for pair, (top, bottom) in enumerate(s.p.seed_pairs()):
        for role, seed_bottom in (("trained", bottom), ("random", 100 + pair)):
            for cut in range(4):
                error = 10.0 + cut + (20 * cut if role == "random" else 0) + pair
                rows.append(dict(panel_id="seeds", top_role="trained", bottom_role=role, comparison="stitch",
                                 panel="seeds", family="ResNet-18", width=0.0625, arch="resnet18", bottom=role,
                                 pair="another seed" if role == "trained" else "random", pair_index=pair,
                                 seed_top=top, seed_bottom=seed_bottom, cut_index=cut, cut=f"block{cut}",
                                 error_init=error + 1, error=error, top_error=10.0, bottom_error=11.0,
                                 penalty_init=error - 9.0, penalty=error - 10.0, cka=0.9 - 0.1 * cut))
    models = pd.DataFrame([dict(model=f"seed {seed}", width=0.0625, seed=seed, test_error=10.0) for seed in s["seeds"]])
    return core.finish(s, pd.DataFrame(rows), models)


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def stamp(text: str) -> datetime.datetime:
    t = datetime.datetime.fromisoformat(text)
    assert t.utcoffset() == datetime.timedelta(0), text
    return t


def test_the_record_has_every_field(run):
    rec = record.build(run, ["x.csv"])
    assert FIELDS <= set(rec)
    assert rec["files"] == ["x.csv"] and rec["record_format"] == record.RECORD_FORMAT
    assert rec["experiment"] == "connectivity" and rec["notebook"] == "01_connectivity" and rec["profile"] == "smoke"
    assert rec["params"] == json.loads(json.dumps(run.p.as_dict())) and rec["params"] == json.loads(json.dumps(run.params))
    assert rec["seeds"] == [0, 1, 2, 3] and rec["seed_pairs"] == [[0, 1], [2, 3]]
    assert rec["executor"] == run.executor.name == "serial"
    assert rec["numerics"] == dataclasses.asdict(run.p.numerics())
    assert rec["device"] == "cpu" and rec["device_name"] == device_name("cpu") and rec["device_name"].strip()
    assert rec["torch"] == torch.__version__ and rec["cuda"] == torch.version.cuda
    assert rec["torchvision"] == __import__("torchvision").__version__ and rec["python"].count(".") == 2
    assert rec["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert rec["code_version"] == code_version() and rec["stitchlib"] == stitchlib.__version__
    assert isinstance(rec["cpus"], int) and isinstance(rec["gpus"], int)
    flags = rec["cpu_flags"]
    assert isinstance(flags, list) and all(isinstance(f, str) for f in flags) and flags == sorted(set(flags))
    if Path("/proc/cpuinfo").is_file():
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.split(":")[0].strip() == "flags")
        assert flags == sorted(set(line.split(":", 1)[1].split())) and flags
    # The data: its name and the sha256 of its decoded images and labels, computed afresh here.
    assert rec["dataset"]["name"] == "cifar10" and re.fullmatch(r"[0-9a-f]{64}", rec["dataset"]["sha256"])
    assert rec["dataset"]["sha256"] == D.data_sha256(run.dataset.train, run.dataset.test)
    assert rec["store"] == str(run.store.root) and Path(rec["figures"]) == run.figures.absolute()
    assert stamp(rec["started"]) <= stamp(rec["written"]) and rec["started"] == run.started
    # Deterministic but for the times, and JSON as it stands.
    again = record.build(run, ["x.csv"])
    assert {k: v for k, v in again.items() if k != "written"} == {k: v for k, v in rec.items() if k != "written"}
    assert json.loads(json.dumps(rec)) == rec


def test_the_git_commit_is_the_checkouts_and_none_outside_one(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("no git")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    state = record.environment()["git"]
    if head.returncode == 0:
        assert state["commit"] == head.stdout.strip() and isinstance(state["dirty"], bool)
        changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True).stdout.strip()
        assert state["dirty"] == bool(changed)
    else:
        assert state == {"commit": None, "dirty": None}
    assert record.git_state(tmp_path) == {"commit": None, "dirty": None}  # not a checkout: no crash, no commit


def test_no_home_folder_in_a_record(run, monkeypatch):
    source = run.dataset.identity["source"]
    home = str(Path(source.split(":", 1)[1]).parent.parent)  # a folder the data source lies under
    if home == "/":
        pytest.skip(f"the data source {source} lies in no folder but the root")
    monkeypatch.setenv("HOME", home)
    rec = record.build(run, ["x.csv"])
    assert rec["dataset"]["source"].startswith(source.split(":", 1)[0] + ":~/")
    text = json.dumps({k: v for k, v in rec.items() if k not in ("params", "store", "figures")})
    assert home + "/" not in text


def test_a_dataset_without_a_digest_is_hashed_once(run, monkeypatch):
    calls = []
    real = D.data_sha256
    monkeypatch.setattr(D, "data_sha256", lambda *a: calls.append(1) or real(*a))
    ds = D.Dataset("tiny", D.subset(run.dataset.train, 64, seed=0), D.subset(run.dataset.test, 32, seed=0),
                   run.dataset.classes, run.dataset.mean, run.dataset.std, {"name": "tiny", "source": "test:tiny"})
    first, second = record.dataset_fields(ds), record.dataset_fields(ds)
    assert first == second and first["sha256"] == real(ds.train, ds.test) and len(calls) == 1


def test_every_csv_and_figure_of_a_run_has_its_record_and_the_csvs_carry_profile_and_seeds(run):
    res = fake_results(run)
    claims = stitchlib.check_claims(res)
    assert list(claims.columns) == CLAIM_COLUMNS  # what a notebook shows is unchanged
    # As connectivity.run writes its heatmap and plot() its figures: the run named.
    write_csv(pd.DataFrame(dict(seed_a=[0], seed_b=[1], cka=[0.5])), run.figures / "01_cka_matrix.csv", record=run)
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    paths = save_figure(fig, run.figures, "fig_test", record=run)
    plt.close(fig)
    assert [p.name for p in paths] == ["fig_test.png", "fig_test.pdf"]
    csvs = sorted(run.figures.glob("*.csv"))
    assert {p.name for p in csvs} == {"01_connectivity.csv", "01_connectivity_claims.csv", "01_connectivity_summary.csv",
                                      "01_connectivity_models.csv", "01_cka_matrix.csv"}
    for output in [*csvs, paths]:
        files = output if isinstance(output, list) else [output]
        rec = load(files[0].with_name(files[0].stem + ".record.json"))
        assert rec["files"] == [f.name for f in files] and all(f.is_file() for f in files)
        assert rec["experiment"] == "connectivity" and rec["profile"] == "smoke" and rec["started"] == run.started
        assert stamp(rec["started"]) <= stamp(rec["written"]) and FIELDS <= set(rec)
        if files[0].suffix == ".csv":
            table = pd.read_csv(files[0])
            assert table.columns[0] == "profile" and (table["profile"] == "smoke").all(), files[0].name
    # The rows: profile and both seeds of each pair, as the results table holds them.
    rows = pd.read_csv(run.figures / "01_connectivity.csv")
    assert list(rows.columns) == list(res.table.columns) and res.table.columns[0] == "profile"
    assert set(zip(rows["pair_index"], rows["seed_top"], rows["seed_bottom"])) == {(0, 0, 1), (1, 2, 3), (0, 0, 100),
                                                                                   (1, 2, 101)}
    assert list(pd.read_csv(run.figures / "01_connectivity_claims.csv").columns) == ["profile", *CLAIM_COLUMNS]
    summary = pd.read_csv(run.figures / "01_connectivity_summary.csv")
    assert summary.columns[0] == "profile" and len(summary) == len(rows) // 2
    assert {"profile", "seed"} <= set(pd.read_csv(run.figures / "01_connectivity_models.csv").columns)
    # Written atomically: no temp file left behind, and every file has its record (PNG and PDF share one).
    names = {p.name for p in run.figures.iterdir()}
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")], names
    outputs = {n.split(".", 1)[0] for n in names if not n.endswith(".record.json")}
    assert {n[: -len(".record.json")] for n in names if n.endswith(".record.json")} == outputs


def test_a_file_records_the_run_its_writer_names_or_none(run, tmp_path):
    more = dataclasses.replace(run, experiment="more_is_better", figures=tmp_path)
    frame = pd.DataFrame(dict(x=[1]))
    assert load(write_csv(frame, tmp_path / "04_freeze_training.csv", record=more).with_name(
        "04_freeze_training.record.json"))["experiment"] == "more_is_better"
    fig = plt.figure()
    save_figure(fig, tmp_path, "c", record=more)
    assert load(tmp_path / "c.record.json")["experiment"] == "more_is_better"
    plt.close(fig)
    # Written for no run: machine and code only, and no profile column.
    rec = load(record.record_path(write_csv(frame, tmp_path / "t.csv")))
    assert rec["profile"] is None and rec["params"] is None and rec["code_version"] == code_version()
    assert "profile" not in pd.read_csv(tmp_path / "t.csv").columns


def test_a_record_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "t.record.json"
    record.write(path, {"a": 1})

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        record.write(path, {"a": 2})
    monkeypatch.undo()
    assert load(path) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["t.record.json"]
    record.write(path, {"b": 2, "a": 1})
    assert path.read_text().index('"a"') < path.read_text().index('"b"')  # keys sorted


def test_describe_names_the_device_and_the_code(run, capsys):
    run.describe()
    out = capsys.readouterr().out
    assert f"device cpu ({device_name('cpu')})" in out and code_version() in out
    commit = record.git_state()["commit"]
    assert (commit[:12] if commit else "git none") in out


def test_run_json_has_the_records_fields(run, tmp_path):
    from stitchlib.__main__ import _RunRecord

    rr = _RunRecord([run], "serial", 0.5)
    rr.write(tmp_path / "run.json", 2.0)
    rec = load(tmp_path / "run.json")
    single = record.build(run, [])
    for key in ("profile", "executor", "device", "device_name", "numerics", "dataset", "git", "code_version",
                "cpu_flags", "cpu_capability", "torch", "torchvision", "cuda", "python", "started"):
        assert rec[key] == single[key], key
    assert rec["params"] == {"connectivity": single["params"]} and rec["seeds"] == {"connectivity": [[0, 1], [2, 3]]}
    assert rec["seconds"] == {"start-up": 0.5, "total": 2.0} and stamp(rec["started"]) <= stamp(rec["written"])
