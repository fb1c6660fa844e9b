"""`stitchlib.explore`: the explorer's programmatic face (`select`, `rows`, `figure`) over the
committed summaries, DataFrames and a run's `Results`, without a browser (tests/test_browser.py
drives the widget in JupyterLab)."""
import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import stitchlib  # noqa: E402
from stitchlib.experiments.core import Results  # noqa: E402
from stitchlib.explore import METRICS, Explorer  # noqa: E402
from stitchlib.statistics import interval  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "results" / "smoke"
SUMMARIES = sorted(SMOKE.glob("*_summary.csv"))


def data_lines(fig):
    ax = fig.axes[0]
    return {line.get_label(): line for line in ax.get_lines() if line.get_gid() == "data"}


def bands(fig):
    return [c for c in fig.axes[0].collections if c.get_gid() == "band"]


def check_drawn(ex: Explorer) -> None:
    """The figure draws exactly `ex.rows`: one line per series, its points the rows' x and metric."""
    m, x = ex.state["metric"], ex.state["x"]
    lines = data_lines(ex.figure)
    assert list(lines) == list(dict.fromkeys(ex.rows["series"]))
    for label, f in ex.rows.groupby("series", sort=False):
        np.testing.assert_allclose(lines[label].get_ydata(), f[m].to_numpy(dtype=float))
        np.testing.assert_allclose(lines[label].get_xdata(), f[x].to_numpy(dtype=float))
    low = f"{m}_low"
    with_interval = ex.rows.groupby("series", sort=False)[low].apply(lambda v: v.notna().any()) \
        if low in ex.rows else pd.Series(dtype=bool)
    assert len(bands(ex.figure)) == int(with_interval.sum())
    assert ex.png.startswith(b"\x89PNG") and ex._image.value == ex.png


def test_the_five_summaries_are_committed():
    assert [p.name for p in SUMMARIES] == [f"{n}_summary.csv" for n in ("01_connectivity", "02_ssl_vs_e2e",
                                                                          "03_label_noise", "04_more_is_better",
                                                                          "05_ablations")]


@pytest.mark.parametrize("path", SUMMARIES, ids=lambda p: p.name.split("_summary")[0])
def test_every_panel_and_metric_draws_the_tables_numbers(path):
    """Every panel (at its first metric, then the others in turn: a redraw takes a quarter second)."""
    table = pd.read_csv(path)
    ex = stitchlib.explore(path)
    assert ex.panels == list(dict.fromkeys(table["panel"]))
    metrics = [m for m in METRICS if m in table and table[m].notna().any()]
    for i, panel in enumerate(ex.panels):
        panel_metrics = ex.metrics(panel)
        assert panel_metrics == [m for m in metrics if table[table["panel"] == panel][m].notna().any()]
        for metric in panel_metrics[i % len(panel_metrics):][:1] if len(ex.panels) > 1 else panel_metrics:
            ex.select(panel=panel, metric=metric)
            assert ex.state["x"] == "cut_index" and set(ex.rows["panel"]) == {panel}
            expected = table[(table["panel"] == panel) & table[metric].notna()]
            assert len(ex.rows) == len(expected)
            np.testing.assert_allclose(np.sort(ex.rows[metric]), np.sort(expected[metric]))
            check_drawn(ex)
    assert ex.widget.children  # a box a notebook shows


def test_changing_pairs_and_metric_changes_rows_and_figure():
    table = pd.read_csv(SMOKE / "03_label_noise_summary.csv")
    ex = stitchlib.explore(SMOKE / "03_label_noise_summary.csv")
    assert ex.pairs() == ["clean labels", "objects vs animals", "50% label noise", "100% label noise"]
    assert len(data_lines(ex.figure)) == 4 and len(ex.rows) == len(table)

    ex.select(pairs=["clean labels", "100% label noise"], metric="CKA")
    assert ex.state["metric"] == "cka"
    lines = data_lines(ex.figure)
    assert list(lines) == ["clean labels", "100% label noise"]
    noisy = table[table["pair"] == "100% label noise"].sort_values("cut_index")
    np.testing.assert_allclose(lines["100% label noise"].get_ydata(), noisy["cka"])
    # The interval is drawn as a band from <metric>_low to <metric>_high.
    band = bands(ex.figure)[1].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(noisy["cka_low"].min()) and band.max() == pytest.approx(noisy["cka_high"].max())
    # Ticks are the cut names.
    assert [t.get_text() for t in ex.figure.axes[0].get_xticklabels()] == list(noisy["cut"])

    ex.select(metric="penalty_init")
    np.testing.assert_allclose(data_lines(ex.figure)["clean labels"].get_ydata(),
                               table[table["pair"] == "clean labels"]["penalty_init"])
    check_drawn(ex)


def test_the_controls_drive_it_as_select_does():
    """What a click does: the widgets' values change, the explorer follows."""
    ex = stitchlib.explore(SMOKE / "04_more_is_better_summary.csv")
    before = ex.png
    ex._metric.value = "cka"
    assert ex.state["metric"] == "cka" and ex.png != before
    ex._panel.value = "training time"
    assert ex._pairs.options == ("epoch 1", "epoch 4") and ex._pairs.value == ("epoch 1", "epoch 4")
    assert ex.state["metric"] == "cka"  # kept where the new panel has it
    ex._pairs.value = ("epoch 4",)
    assert set(ex.rows["pair"]) == {"epoch 4"}
    check_drawn(ex)
    ex._pairs.value = ()
    assert ex.rows.empty and not data_lines(ex.figure) and ex._status.value == ""
    ex._panel.value = "width"  # CKA only: its only metric
    assert ex._metric.options == (("CKA", "cka"),)


def test_lines_with_one_pair_are_told_apart():
    """01's panel holds one 'another seed' line per network: each is a line of its own, chosen
    together by their pair; their cut names differ, so the ticks are the cut indices."""
    ex = stitchlib.explore(SMOKE / "01_connectivity_summary.csv")
    assert ex.pairs() == ["another seed (ResNet-18)", "random (ResNet-18)", "another seed (ResNet-11)",
                          "random (ResNet-11)", "another seed (Myrtle CNN)", "random (Myrtle CNN)"]
    ex.select(pairs="another seed")
    assert ex.state["lines"] == ["another seed (ResNet-18)", "another seed (ResNet-11)", "another seed (Myrtle CNN)"]
    assert "cut index" in ex.figure.axes[0].get_xlabel()
    ex.select(pairs=["another seed (ResNet-18)", "random (ResNet-18)"])
    assert ex.figure.axes[0].get_xticklabels()[1].get_text() == "layer1.0"
    check_drawn(ex)


def test_a_numeric_x_axis():
    """05's convergence panel against the stitcher's steps: one line per cut and start, on a log axis."""
    table = pd.read_csv(SMOKE / "05_ablations_summary.csv")
    conv = table[table["panel"] == "stitcher convergence"]
    ex = stitchlib.explore(table).select(panel="stitcher convergence")
    assert ex.x_axes() == ["cut_index", "value"]
    assert len(ex.pairs()) == 6 and ex.pairs()[0] == "least-squares start (value 4)"
    ex.select(x="value", pairs=["random start"])
    assert len(data_lines(ex.figure)) == conv["cut"].nunique()
    stem = conv[(conv["cut"] == "stem") & (conv["pair"] == "random start")].sort_values("value")
    np.testing.assert_allclose(data_lines(ex.figure)["stem (random start)"].get_ydata(), stem["penalty"])
    assert ex.figure.axes[0].get_xscale() == "log"
    check_drawn(ex)
    ex.select(panel="kernel size")  # no values axis... kept where offered
    assert ex.state["x"] == "value"
    ex.select(panel="BatchNorm policy")  # ...else back to the cuts
    assert ex.state["x"] == "cut_index"


def tidy_table() -> pd.DataFrame:
    """A tidy table as figures/<profile>/<notebook>.csv holds it: two seed pairs per cut."""
    summary = pd.read_csv(SMOKE / "02_ssl_vs_e2e_summary.csv")
    keep = ["profile", "panel", "pair", "direction", "panel_id", "top_role", "bottom_role", "comparison", "cut_index",
            "cut"]
    rows = []
    for index, shift in ((0, -1.0), (1, 3.0)):
        f = summary[keep].copy()
        f["pair_index"], f["seed_top"], f["seed_bottom"] = index, 2 * index, 2 * index + 1
        f["penalty"] = summary["penalty"] + shift
        f["penalty_init"] = summary["penalty_init"] - shift
        f["cka"] = summary["cka"] * (1 - 0.05 * index)
        f["top_error"] = 20.0
        rows.append(f)
    return pd.concat(rows, ignore_index=True)


def test_a_tidy_table_is_summarised_over_its_seed_pairs(tmp_path):
    tidy = tidy_table()
    path = tmp_path / "02_ssl_vs_e2e.csv"
    tidy.to_csv(path, index=False)
    for source in (tidy, path):
        ex = stitchlib.explore(source)
        first = ex.rows[(ex.rows["pair"] == "two supervised seeds") & (ex.rows["cut_index"] == 3)].iloc[0]
        values = tidy[(tidy["pair"] == "two supervised seeds") & (tidy["cut_index"] == 3)]["penalty"]
        iv = interval(values.to_numpy(), confidence=0.95)
        assert first["pairs"] == 2
        assert (first["penalty"], first["penalty_low"], first["penalty_high"]) == pytest.approx((iv.mean, iv.low, iv.high))
        assert len(bands(ex.figure)) == 3
        check_drawn(ex)
    assert stitchlib.explore(tidy, confidence=0.5).rows["penalty_high"].iloc[0] < first["penalty_high"]


def test_results_are_summarised_by_the_library():
    """A notebook's `results`: its table through `summary_table`, titled by its experiment."""
    tidy = tidy_table()
    results = Results(tidy, pd.DataFrame(), SimpleNamespace(experiment="ssl_vs_e2e", params={"confidence": 0.95}))
    ex = stitchlib.explore(results)
    assert ex.title.startswith("02_ssl_vs_e2e: ")
    from stitchlib.claims import summary_table

    expected = summary_table(results)
    np.testing.assert_allclose(ex.rows["penalty_high"], expected["penalty_high"])
    check_drawn(ex)


def test_a_table_without_intervals_or_seed_pairs_is_drawn_as_it_is():
    table = pd.read_csv(SMOKE / "03_label_noise_summary.csv")
    table = table[[c for c in table.columns if not c.endswith(("_low", "_high"))]]
    ex = stitchlib.explore(table)
    assert not bands(ex.figure) and "bands" not in ex.figure.axes[0].get_title()
    check_drawn(ex)
    # Several rows at one line and cut (no pair_index to summarise them by): points, not lines.
    ex = stitchlib.explore(pd.concat([table, table.assign(penalty=table["penalty"] + 1)]))
    assert all(line.get_linestyle() == "None" for line in data_lines(ex.figure).values())
    assert len(ex.rows) == 2 * len(table)


# ------------------------------------------------------------------ bad input

def test_a_path_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file .*nothing.csv.*CSV written by stitchlib"):
        stitchlib.explore(str(tmp_path / "nothing.csv"))


def test_a_folder():
    with pytest.raises(ValueError, match="is a folder .*01_connectivity_summary.csv.*one CSV"):
        stitchlib.explore(SMOKE)


@pytest.mark.parametrize("name", ["01_connectivity_claims.csv", "03_label_noise_models.csv", "timings.csv"])
def test_a_csv_that_is_not_a_results_table(name):
    table = pd.read_csv(SMOKE / name)
    missing = [c for c in ("panel", "pair", "cut_index", "cut") if c not in table.columns]
    with pytest.raises(ValueError, match="is not a stitchlib results table") as e:
        stitchlib.explore(SMOKE / name)
    assert name in str(e.value) and f"lacks the columns {missing}" in str(e.value)


def test_a_file_that_is_not_csv_or_has_no_numbers(tmp_path):
    binary = tmp_path / "x.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 100)
    with pytest.raises(ValueError, match="x.csv"):
        stitchlib.explore(binary)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="not a CSV results table"):
        stitchlib.explore(empty)
    table = pd.read_csv(SMOKE / "02_ssl_vs_e2e_summary.csv")
    with pytest.raises(ValueError, match=r"no values of any metric.*'penalty', 'penalty_init', 'cka'"):
        stitchlib.explore(table.drop(columns=[c for c in table.columns if c.startswith(("penalty", "cka"))]))
    with pytest.raises(ValueError, match="has no rows"):
        stitchlib.explore(table.iloc[:0])


@pytest.mark.parametrize("source", [42, None, [1, 2], {"panel": []}])
def test_an_unsupported_source(source):
    with pytest.raises(TypeError, match=f"cannot explore a {type(source).__name__}: give the Results .*DataFrame.*CSV"):
        stitchlib.explore(source)


def test_a_metric_the_table_lacks():
    table = pd.read_csv(SMOKE / "02_ssl_vs_e2e_summary.csv")
    ex = stitchlib.explore(table.drop(columns=["cka", "cka_low", "cka_high"]))
    assert ex.metrics() == ["penalty", "penalty_init"]
    with pytest.raises(ValueError, match=r"no metric 'cka': its metrics are 'penalty' \(penalty after training\), "
                                         r"'penalty_init' \(penalty at initialisation\)$"):
        ex.select(metric="cka")
    with pytest.raises(ValueError, match="no metric 'accuracy'"):
        ex.select(metric="accuracy")
    assert ex.state["metric"] == "penalty"  # nothing changed
    # A metric of the table that this panel lacks.
    ex = stitchlib.explore(SMOKE / "04_more_is_better_summary.csv")
    with pytest.raises(ValueError, match=r"panel 'width' has no values of 'penalty'.*its metrics are 'cka' \(CKA\)"):
        ex.select(panel="width", metric="penalty")
    assert ex.state["panel"] == "samples"


def test_a_panel_pair_or_x_that_does_not_exist():
    ex = stitchlib.explore(SMOKE / "03_label_noise_summary.csv")
    with pytest.raises(ValueError, match=r"no panel 'labels': the panels are \['label distribution'\]"):
        ex.select(panel="labels")
    with pytest.raises(ValueError, match=r"panel 'label distribution' has no pair '10% label noise': its pairs are "
                                         r"\['clean labels', 'objects vs animals', '50% label noise', '100% label noise'\]"):
        ex.select(pairs=["clean labels", "10% label noise"])
    with pytest.raises(ValueError, match=r"no x axis 'width': its x axes are \['cut_index', 'noise'\]"):
        ex.select(x="width")
    assert ex.state["lines"] == ex.pairs()


def test_without_ipywidgets(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets now raises ImportError
    with pytest.raises(ImportError, match=r"needs ipywidgets: pip install 'stitchlib\[notebooks\]'"):
        stitchlib.explore(SMOKE / "02_ssl_vs_e2e_summary.csv")


def test_the_module_imports_without_ipywidgets(monkeypatch):
    """ipywidgets is imported when `explore` is called, not when stitchlib (or its explore module) is."""
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    monkeypatch.delitem(sys.modules, "stitchlib.explore")
    monkeypatch.setattr(stitchlib, "explore", stitchlib.explore)  # the import below rebinds it to the module
    module = importlib.import_module("stitchlib.explore")
    table, title = module.load_table(SMOKE / "02_ssl_vs_e2e_summary.csv")
    assert len(table) == 30 and title == "02_ssl_vs_e2e_summary.csv"


def test_metric_names():
    assert callable(stitchlib.explore) and "explore" in stitchlib.__all__
    assert METRICS == {"penalty": "penalty after training", "penalty_init": "penalty at initialisation",
                       "cka": "CKA"}
