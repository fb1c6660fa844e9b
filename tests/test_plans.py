"""Every notebook planned at every profile, in seconds, on a CPU: a profile that cannot run fails
here, not after hours on a GPU. Plans load no data and train nothing."""
import dataclasses
import math
from pathlib import Path

import pytest
import yaml

import stitchlib
from stitchlib import data as data_mod
from stitchlib.__main__ import main
from stitchlib.experiments import EXPERIMENTS, PROFILES, make_plan
from stitchlib.experiments import more_is_better as M
from stitchlib.experiments.params import RUN_OPTIONS, markdown_table, parameters_cell, profile_yaml
from stitchlib.experiments.tasks import CKA, Checkpoint, Stitch, TrainedModel
from stitchlib.training import RECIPES

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(e.notebook for e in EXPERIMENTS.values())


def _stitches(plan):
    return [t for t in plan.tasks() if isinstance(t, Stitch)]


def _top_train(task):
    top = task.top
    return top.run.train if isinstance(top, Checkpoint) else top.train


@pytest.mark.parametrize("notebook", NOTEBOOKS)
@pytest.mark.parametrize("profile", PROFILES)
def test_every_notebook_plans_at_every_profile(notebook, profile):
    plan = make_plan(notebook, profile)
    tasks = plan.tasks()
    assert tasks and plan.comparisons
    # Every stitcher trains on images its top was trained on, never more than the top has.
    for st in _stitches(plan):
        top_train = _top_train(st)
        assert st.train.steps[:len(top_train.steps)] == top_train.steps and st.train.size <= top_train.size
        assert st.train.size == min(plan.params.stitch_samples, top_train.size)
    cost = plan.cost()
    assert cost.iloc[-1]["task"] == "total" and cost.iloc[-1]["gpu_hours"] > 0
    assert math.isclose(cost.iloc[-1]["pflop"], cost.iloc[:-1]["pflop"].sum())


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks" / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_every_profile_file_plans(path):
    values = yaml.safe_load(path.read_text())
    profile = values.pop("profile")
    for name in RUN_OPTIONS:
        values.pop(name, None)
    plan = make_plan(path.name.split(".")[0], profile, **values)
    assert plan.params.as_dict() == values


def test_the_users_paper_command_plans():
    """`papermill 04_more_is_better.ipynb out.ipynb -f params/04_more_is_better.paper.yaml -p samples 25000`
    raised before this plan existed: the samples panel's top has 10,000 images and the stitcher
    asked for 50,000. Now the stitcher of a top gets at most the top's images."""
    values = yaml.safe_load((ROOT / "notebooks" / "params" / "04_more_is_better.paper.yaml").read_text())
    for name in RUN_OPTIONS[1:]:
        values.pop(name)
    plan = make_plan("04_more_is_better", values.pop("profile"), **{**values, "samples": 25000})
    samples = [c for c in plan.comparisons if c.columns["panel"] == "samples" and c.stitch is not None]
    assert {c.stitch.train.size for c in samples} == {10000}
    # Appendix B.4's reversed pair has the 5,000-sample model as its top: its stitcher sees those.
    reversed_ = [c for c in plan.comparisons if c.columns["panel_id"] == "samples_reversed"]
    assert {c.stitch.train.size for c in reversed_} == {5000}
    others = [c for c in plan.comparisons if c.columns["panel"] not in ("samples", "samples, reversed")
              and c.stitch is not None]
    assert {c.stitch.train.size for c in others} == {50000}


def test_the_paper_disjoint_halves_stitch_on_their_own_half():
    plan = make_plan("connectivity", "paper")
    disjoint = [c for c in plan.comparisons if c.columns["panel"] == "disjoint"]
    assert len(disjoint) == 3 and {c.stitch.train.size for c in disjoint} == {25000}
    assert all(c.stitch.train.steps[:-1] == c.top.train.steps for c in disjoint)
    # Each half gets as many SGD steps as the full subset: twice the epochs.
    assert {c.top.steps() for c in disjoint} == {c.top.steps() for c in plan.comparisons
                                                 if c.columns["family"] == "ResNet-18" and c.columns["width"] == 1.0}


def test_table1_reads_the_other_notebooks_at_its_profile_with_its_seeds():
    plan = make_plan("ablations", "paper", seeds=[10, 11, 12, 13, 14, 15, 16, 17])
    assert set(plan.uses) == {"connectivity", "ssl_vs_e2e", "label_noise", "more_is_better"}
    for name, other in plan.uses.items():
        assert other.profile == "paper" and other.params.seeds == [10, 11, 12, 13, 14, 15, 16, 17], name
        assert other.params.epochs == 164.0
    # Cross-notebook reuse: 05's ResNet-18 seed pairs are 01's (one task, one store key).
    mine = {t for c in plan.comparisons for t in (c.top, c.bottom) if isinstance(t, TrainedModel)}
    theirs = {t for c in plan.uses["connectivity"].comparisons for t in (c.top, c.bottom)}
    assert {t for t in mine if t.arch == "resnet18"} <= theirs


def test_later_notebooks_reuse_01s_seed_pairs_and_04s_run_ends_at_01s_model():
    base = {t for c in make_plan("connectivity").comparisons for t in (c.top, c.bottom)}
    # The two ResNet-18 seed pairs; 05 also takes 01's ResNet-11 tops and random networks, and its
    # random ResNet-18s (the random control's BatchNorm panel).
    for name, shared in (("ssl_vs_e2e", 4), ("label_noise", 4), ("more_is_better", 4), ("ablations", 10)):
        used = {t for c in make_plan(name).comparisons for t in (c.top, c.bottom)}
        assert len(used & base) == shared, name
    run = next(t for t in make_plan("more_is_better").tasks() if isinstance(t, TrainedModel) and t.keep_checkpoints)
    assert run.plain() in base


def test_equal_steps_counts_the_batches_the_loader_gives():
    """The training loop drops the last partial batch: 10,000 images at batch 128 are 78 steps an
    epoch, not 79. A model on n images takes exactly the base model's steps."""
    p = make_plan("more_is_better").params
    base = dataclasses.replace(RECIPES["resnet18"], epochs=p.epochs)
    reference = TrainedModel("base", "resnet18", 0.125, 0, make_plan("more_is_better").comparisons[0].top.train,
                             make_plan("more_is_better").comparisons[0].top.test, base)
    assert reference.steps() == 4 * (10000 // 128) == 312
    for n in (5000, 25000, 50000):
        recipe = M.equal_steps(p, base, n)
        assert recipe.steps == 312 and recipe.epochs == pytest.approx(312 / (n // 128))
    assert M.equal_steps(p, base, 10000) is base


def test_plans_load_no_data_and_build_no_weights(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("a plan loaded data")

    monkeypatch.setattr(data_mod, "load_dataset", forbidden)
    monkeypatch.setattr(stitchlib.experiments.core.data_mod, "load_dataset", forbidden)
    for notebook in NOTEBOOKS:
        for profile in PROFILES:
            make_plan(notebook, profile).cost()


@pytest.mark.parametrize("argv,message", [
    (["nope"], "unknown experiment or notebook 'nope'; valid:"),
    (["01", "--profile", "huge"], r"unknown profile 'huge'; valid: \['smoke', 'fast', 'paper'\]"),
    (["01", "-p", "bogus", "1"], r"unknown parameters \['bogus'\] for 'connectivity'; valid:"),
    (["01", "-p", "widths", "1.0"], "parameter 'widths' must be list, got float 1.0"),
    (["03", "-p", "noise", "[0.5]"], r"give lists and dicts as YAML: -y \"noise: \[0.5\]\""),
    (["04", "-p", "samples", "60000"], r"samples=60000 must be in \[128, 50000\]"),
    (["04", "-y", "checkpoint_epochs: [1, 9]"], r"epochs in \(0, epochs=4\]"),
    (["01", "-p", "stitch_samples", "20000"], r"stitch_samples=20000 must be in \[1, 10000\]"),
    (["02", "-p", "seeds", "3"], "parameter 'seeds' must be list"),
])
def test_plan_command_refuses_bad_input_with_what_is_valid(capsys, argv, message):
    assert main(["plan", *argv]) == 2
    import re
    assert re.search(message, capsys.readouterr().err)


def test_plan_command_prints_tasks_store_state_and_cost(capsys, tmp_path):
    assert main(["plan", "notebooks/04_more_is_better.ipynb", "-f",
                 str(ROOT / "notebooks" / "params" / "04_more_is_better.paper.yaml"), "-p", "samples", "25000",
                 "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "at profile paper" in out and "hours on one NVIDIA H200" in out and "total" in out
    assert "0 of 129 tasks stored" in out
    assert main(["plan", "label_noise", "--summary"]) == 0
    assert "estimated cost" in capsys.readouterr().out


def test_plan_keys_are_the_keys_a_run_stores(tmp_path):
    """Plan, run, plan again: every task the plan names is then in the store under its key."""
    tiny = dict(widths=[0.0625], seeds=[0, 1, 2, 3], train_samples=256, test_samples=128, epochs=0.5,
                stitch_samples=128, stitch_epochs=0.0, ls_samples=128, cka_samples=64, architectures={}, disjoint=False)
    s = stitchlib.setup("connectivity", device="cpu", store=str(tmp_path / "store"), figures_dir=str(tmp_path / "f"),
                        **tiny)
    keys = s.runner.keys
    before = [keys.stored(t) for t in s.plan.tasks()]
    assert before.count(False) == len([t for t in s.plan.tasks() if t.kind])  # all but the random networks
    stitchlib.connectivity(s)
    assert all(keys.stored(t) for t in s.plan.tasks())
    text = stitchlib.experiments.plan_report("connectivity", store=str(tmp_path / "store"), **tiny)
    assert f"{len(s.plan.tasks())} of {len(s.plan.tasks())} tasks stored" in text
    stored = {p.stem for kind in ("model", "stitch", "cka", "cka_matrix") for p in (tmp_path / "store" / kind).glob("*.pt")}
    assert {keys.key(t) for t in s.plan.tasks() if isinstance(t, (TrainedModel, Stitch, CKA))} == stored


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_parameters_are_declared_once(notebook):
    """The parameters cell, the profile YAML files and the README's parameter tables are generated
    from the experiment's parameter class and equal to it."""
    import json
    e = stitchlib.experiments.experiment_named(notebook)
    nb = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    assert "".join(cell["source"]) == parameters_cell(e.Params)
    for profile in PROFILES:
        assert (ROOT / "notebooks" / "params" / f"{notebook}.{profile}.yaml").read_text() == profile_yaml(
            e.Params, notebook, profile)
    assert markdown_table(e.Params) in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("notebook", NOTEBOOKS)
@pytest.mark.parametrize("profile", PROFILES)
def test_every_comparison_declares_its_machine_columns(notebook, profile):
    """Claims and plots select rows by machine columns (identifiers fixed by the experiment), never by
    the display labels they show; each experiment declares the values its columns take."""
    from stitchlib.experiments.core import MACHINE_COLUMNS
    e = stitchlib.experiments.experiment_named(notebook)
    assert set(e.columns) == set(MACHINE_COLUMNS)
    plan = make_plan(notebook, profile, imagenet_dir="/data/val") if e.name == "ssl_vs_e2e" else make_plan(notebook,
                                                                                                          profile)
    seen = {c: set() for c in MACHINE_COLUMNS}
    for comparison in plan.comparisons:
        for column in MACHINE_COLUMNS:
            seen[column].add(comparison.columns[column])
        assert (comparison.columns["comparison"] == "cka_only") == (comparison.stitch is None)
    for column in MACHINE_COLUMNS:
        assert seen[column] <= e.columns[column], (column, seen[column] - e.columns[column])
    # At paper scale every declared panel is planned (ImageNet's rows are made while running).
    if profile == "paper":
        assert e.columns["panel_id"] - seen["panel_id"] <= {"imagenet"}


def test_a_comparison_without_machine_columns_is_refused():
    from stitchlib.experiments.core import Splits, compare
    p = make_plan("label_noise").params
    top = make_plan("label_noise").comparisons[0].top
    with pytest.raises(ValueError, match="lack the machine columns"):
        compare(p, Splits.of(p), top, top, dict(panel="x", pair="y"))


def test_table1_sources_that_do_not_fit_stop_05_before_any_work(tmp_path, monkeypatch):
    """05 at one epoch would read 04 with checkpoints beyond its run: the plan says so, and the run
    stops on it before training anything (unless the caller gives 01-04's setups itself)."""
    plan = make_plan("ablations", epochs=1.0)
    assert "more_is_better" not in plan.uses and any("checkpoint_epochs" in n for n in plan.notes)
    s = stitchlib.setup("ablations", device="cpu", store=str(tmp_path / "s"), figures_dir=str(tmp_path / "f"),
                        epochs=1.0)

    def forbidden(*a, **k):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(stitchlib.experiments.compute, "train_model", forbidden)
    with pytest.raises(ValueError, match="Table 1 needs the results of .*more_is_better cannot be read at profile "
                                         "'smoke'.*checkpoint_epochs"):
        stitchlib.ablations(s)


def test_an_int_for_a_float_parameter_is_the_same_run():
    """papermill's `-p width 1` gives an int: the same models, the same keys as 1.0."""
    from stitchlib.experiments.compute import KeyContext
    from stitchlib.store import Store
    keys = KeyContext(Store("/nonexistent"), {"name": "cifar10", "source": "x", "sha256": "0"}, "cpu", 3)
    as_int, as_float = make_plan("ablations", "paper", width=1), make_plan("ablations", "paper")
    assert as_int.params.width == 1.0 and isinstance(as_int.params.width, float)
    assert len(as_int.tasks()) == len(as_float.tasks())
    assert [keys.key(t) for t in as_int.tasks()] == [keys.key(t) for t in as_float.tasks()]
    assert make_plan("04", widths=[1, 2], width=1).params.widths == [1.0, 2.0]


@pytest.mark.parametrize("notebook,params,message", [
    ("04", dict(fewer_samples=100), r"fewer_samples=100 must be in \[128, 50000\].*at least one batch of 128"),
    ("01", dict(train_samples=200, stitch_samples=100, disjoint=True), r"each half needs at least one batch of 128.*train_samples >= 256"),
    ("02", dict(imagenet_dir="/nonexistent/val", imagenet_samples=100),
     r"imagenet_samples=100 cannot give both halves .* 1000 classes .* >= 2000"),
    ("05", dict(finetune_arch={"depth": 12}), r"finetune_arch \(the ResNet-164 family\): depth must be 9n \+ 2"),
    ("01", dict(architectures={"myrtle": {"depth": 3}}), r"architectures\['myrtle'\]: .*unexpected keyword .*depth"),
])
def test_sizes_and_architectures_that_cannot_run_are_refused_by_the_plan(notebook, params, message):
    with pytest.raises(ValueError, match=message):
        make_plan(notebook, **params)


def test_the_plan_keys_name_the_device_the_run_will_use(capsys, tmp_path):
    assert main(["plan", "03", "--summary", "--device", "cuda", "--store", str(tmp_path)]) == 0
    assert "keys for device cuda" in capsys.readouterr().out
    assert main(["plan", "03", "-p", "device", "cpu", "--summary", "--store", str(tmp_path)]) == 0
    assert "keys for device cpu" in capsys.readouterr().out
    assert main(["plan", "03", "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
