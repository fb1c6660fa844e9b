import io
import json
import math
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.text  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import stitchlib  # noqa: E402
from stitchlib.claims import summary_table  # noqa: E402
from stitchlib.plotting import TOP_ALONE, facet_grid, figures_from_tables  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _shared_labels(fig):
    (legend,) = fig.legends
    return [t.get_text() for t in legend.get_texts()]


def _results(folder):
    rows = [dict(family="ResNet-18", width=w, bottom=b, pair=b, pair_index=i, seed_top=2 * i, seed_bottom=2 * i + 1,
                 cut_index=c, cut=f"c{c}", penalty=c * (3 if b == "random" else 0.5) + i, penalty_init=c + i,
                 cka=1 - c / 20 - i / 50)
            for w in (0.5, 1.0) for b in ("trained", "random") for i in range(2) for c in range(4)]
    rows += [dict(family="ViT", width=0.08, bottom="trained", pair="seed 1", pair_index=i, seed_top=2 * i,
                  seed_bottom=2 * i + 1, cut_index=c, cut=f"blocks.{c}", penalty=1.0 + i, penalty_init=2.0, cka=0.9)
             for i in range(2) for c in range(3)]
    setup = _setup("connectivity", folder, {"arch": "resnet18", "architectures": {"vit": {}}, "confidence": 0.95},
                   "archive:/x/c.jpeg.tar.gz")
    return SimpleNamespace(table=pd.DataFrame(rows), setup=setup)


def _setup(experiment, folder, params, source):
    """A run's setup as `plot` and the figures' records (`stitchlib.record`) read it."""
    return SimpleNamespace(experiment=experiment, figures=folder, profile="smoke", device=torch.device("cpu"),
                           store=SimpleNamespace(root=folder / "store"), params=params,
                           dataset=SimpleNamespace(identity={"name": "cifar10", "source": source, "sha256": "0" * 64}))


def test_figures_are_written_and_byte_identical_on_rerun(tmp_path):
    out = stitchlib.plot(_results(tmp_path))
    names = sorted(p.name for p in out["paths"] if p.suffix in (".png", ".pdf"))
    assert names == ["fig2a_connectivity.pdf", "fig2a_connectivity.png", "fig5_cka.pdf", "fig5_cka.png"]
    record = json.loads((tmp_path / "fig2a_connectivity.record.json").read_text())
    assert record["files"] == ["fig2a_connectivity.png", "fig2a_connectivity.pdf"] and record["profile"] == "smoke"
    first = {p.name: p.read_bytes() for p in out["paths"]}
    again = stitchlib.plot(_results(tmp_path))
    assert {p.name: p.read_bytes() for p in again["paths"]} == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left
    title = " ".join(out["fig2a_connectivity"]._suptitle.get_text().split())  # wrapped to the page
    assert "CIFAR-10 (JPEG copy)" in title and "not on CIFAR-5m" in title and "95% intervals" in title
    assert len(out["fig2a_connectivity"].axes) == 4 and len(out["fig5_cka"].axes) == 2  # (2 rows x) 2 models
    ax = out["fig2a_connectivity"].axes[0]
    assert ax.get_legend() is None
    # One line per width and bottom, each with its interval band, the zero line (no top error in
    # these rows) and the paper's bound dashed, in one legend for the figure.
    assert _shared_labels(out["fig2a_connectivity"]) == [
        "0.5x, another seed", "0.5x, random network", "1x, another seed", "1x, random network", "0.08x, another seed",
        TOP_ALONE, "paper: up to 3 points"]
    assert len(ax.collections) == 4  # the four bands
    # The band of the trained 0.5x line spans the two pairs' means (t interval: far wider than their range).
    trained = ax.lines[0]
    assert list(trained.get_ydata()) == [0.5, 1.0, 1.5, 2.0]
    assert out["fig2a_connectivity"].axes[1].get_title().startswith("ViT (trained on CIFAR-10, not CIFAR-5m)")
    # The saved file has the size the figure was made at: at most a 7-inch page (150 dpi).
    width, _ = Image.open(tmp_path / "fig2a_connectivity.png").size
    assert width <= 7.0 * 150 and abs(width / 150 - out["fig2a_connectivity"].get_figwidth()) <= 0.05


def test_relative_bounds_follow_the_reference_curve(tmp_path):
    """Claims about a difference (a weak bottom within 3 points of the clean seed over the first
    half of the cuts) draw the paper's bound as the reference curve shifted by 3, where the claim
    looks."""
    rows = [dict(panel="labels", pair=pair, labels=labels, noise=noise, panel_id="labels", top_role="clean",
                 bottom_role=labels, comparison="stitch", pair_index=i, seed_top=2 * i,
                 seed_bottom=2 * i + 1, cut_index=c, cut=f"c{c}", penalty=c + shift + i, penalty_init=c + shift,
                 cka=0.5)
            for pair, labels, noise, shift in (("clean labels", "clean", 0.0, 0.0), ("100% label noise", "noise", 1.0, 9.0))
            for i in range(2) for c in range(6)]
    setup = _setup("label_noise", tmp_path, {"confidence": 0.95}, "torchvision")
    out = stitchlib.plot(SimpleNamespace(table=pd.DataFrame(rows), setup=setup))
    ax = out["fig3a_label_noise"].axes[0]
    bound = next(line for line in ax.lines if line.get_label().startswith("paper: clean + 3"))
    # The clean curve (mean over the two pairs: c + 0.5) + 3, over the first three of six cuts.
    assert list(bound.get_xdata()) == [0, 1, 2] and list(bound.get_ydata()) == [3.5, 4.5, 5.5]
    # Only on the trained stitcher's row: no claim bounds the penalty at initialisation.
    init = out["fig3a_label_noise"].axes[1]
    assert not [line for line in init.lines if line.get_label().startswith("paper")]


# ------------------------------------------------------------------ every figure from small tables
# The rows tables' columns, as the runs write them (results/smoke/<notebook>.csv), before the values.
_PAIR = ["pair_index", "seed_top", "seed_bottom"]
_KEYS = {"connectivity": ["family", "arch", "width", "panel", "bottom", "pair", *_PAIR, "panel_id", "top_role",
                          "bottom_role", "comparison"],
         "ssl_vs_e2e": ["panel", "pair", "direction", *_PAIR, "panel_id", "top_role", "bottom_role", "comparison"],
         "label_noise": ["panel", "pair", "labels", "noise", *_PAIR, "panel_id", "top_role", "bottom_role",
                         "comparison"],
         "more_is_better": ["panel", "pair", "value", *_PAIR, "panel_id", "top_role", "bottom_role", "comparison"],
         "ablations": ["panel", "pair", "value", *_PAIR, "panel_id", "top_role", "bottom_role", "comparison"]}
_VALUES = ["cut_index", "cut", "error_init", "error", "top_error", "bottom_error", "penalty_init", "penalty", "cka"]
# The summaries' columns (results/smoke/<notebook>_summary.csv) after the rows' labels.
_SUMMARY = ["cut_index", "cut", "pairs", "penalty", "penalty_low", "penalty_high", "penalty_init", "penalty_init_low",
            "penalty_init_high", "cka", "cka_low", "cka_high"]
RESNET, SMALL = ["stem", "layer1", "layer2", "pool"], ["stem", "stage1", "pool"]
CAPTION = "CIFAR-10 [smoke]; mean over seed pairs, bands: 95% intervals"


def _rows(experiment, lines):
    """Two seed pairs of each line (a dict of its labels, with `cuts`, `top` (the top's error),
    and `penalty`, `init` and `cka` (functions of the cut index, or None: not measured))."""
    rows = []
    for line in lines:
        labels = {k: v for k, v in line.items() if k not in ("cuts", "top", "penalty", "init", "cka")}
        for i in range(2):
            top = line.get("top", 50.0) + (1 if i else -1)  # the two pairs' tops: 49 and 51% wrong
            for c, cut in enumerate(line.get("cuts", RESNET)):
                init, cka = line.get("init", lambda c: c + 5.0), line.get("cka", lambda c: 0.9 - c / 10)
                penalty = line.get("penalty", lambda c: c + 1.0)(c) + i
                penalty_init = init(c) + i if init else math.nan
                rows.append(dict(**labels, pair_index=i, seed_top=2 * i, seed_bottom=2 * i + 1, cut_index=c,
                                 cut=cut, error_init=top + penalty_init, error=top + penalty, top_error=top,
                                 bottom_error=55.0, penalty_init=penalty_init, penalty=penalty,
                                 cka=cka(c) + i / 50 if cka else math.nan))
    frame = pd.DataFrame(rows)
    return frame[[c for c in _KEYS[experiment] + _VALUES if c in frame]]


def _connectivity():
    def family(name, arch, width, panel="seeds", random=True):
        m = dict(family=name, arch=arch, width=width, panel=panel, panel_id=panel, top_role="trained",
                 comparison="stitch", cuts=RESNET if arch == "resnet18" else SMALL, top=40.0 if arch == "vit" else 50.0)
        yield dict(m, bottom="trained", pair="another seed", bottom_role="trained")
        if random:
            yield dict(m, bottom="random", pair="random", bottom_role="random", penalty=lambda c: 10.0 * c)

    lines = [*family("ResNet-18", "resnet18", 0.5), *family("ViT", "vit", 1.0, random=False),
             *family("ResNet-18, disjoint halves", "resnet18", 0.5, panel="disjoint", random=False)]
    matrix = pd.DataFrame([dict(family="ResNet-18", width=0.5, seed_a=0, seed_b=1, cut_index_a=a, cut_a=RESNET[a],
                                cut_index_b=b, cut_b=RESNET[b], cka=1 - abs(a - b) / 4)
                           for a in range(4) for b in range(4)])
    params = {"confidence": 0.95, "dataset": "cifar10", "architectures": {"vit": {"width": 1.0}}}
    return _rows("connectivity", lines), params, dict(cka_matrix=matrix)


def _ssl():
    m = dict(panel="CIFAR-10", panel_id="cifar10", comparison="stitch")
    lines = [dict(m, pair="two supervised seeds", direction="E2E into E2E", top_role="e2e", bottom_role="e2e"),
             dict(m, pair="SSS bottom into E2E top", direction="SSS into E2E", top_role="e2e", bottom_role="sss",
                  cka=lambda c: 0.5),
             dict(m, pair="E2E bottom into SSS top", direction="E2E into SSS", top_role="sss", bottom_role="e2e",
                  cka=lambda c: 0.5, top=60.0),
             dict(panel="ImageNet", panel_id="imagenet", comparison="stitch", pair="simclr bottom into supervised top",
                  direction="simclr into E2E", top_role="supervised", bottom_role="simclr", top=24.0)]
    rows = _rows("ssl_vs_e2e", lines)
    rows = rows[(rows["panel_id"] == "cifar10") | (rows["pair_index"] == 0)]  # one pretrained network each
    return rows, {"confidence": 0.95}, {}


def _label_noise():
    m = dict(panel="label distribution", panel_id="labels", top_role="clean", comparison="stitch")
    lines = [dict(m, pair="clean labels", labels="clean", noise=0.0, bottom_role="clean"),
             dict(m, pair="objects vs animals", labels="coarse", noise=math.nan, bottom_role="coarse"),
             dict(m, pair="100% label noise", labels="noise", noise=1.0, bottom_role="noise", penalty=lambda c: 9.0)]
    return _rows("label_noise", lines), {"confidence": 0.95}, {}


def _more_is_better(widths=(0.5, 1.0, 2.0)):
    def line(panel_id, panel, pair, value, top_role, bottom_role, comparison="stitch", **kw):
        return dict(panel=panel, pair=pair, value=value, panel_id=panel_id, top_role=top_role, bottom_role=bottom_role,
                    comparison=comparison, **kw)

    no_stitch = dict(penalty=lambda c: math.nan, init=None)
    lines = [line("samples", "samples", f"{n:,} samples", float(n), "top_samples", role)
             for n, role in ((5000, "fewer_samples"), (10000, "top_samples"), (25000, "more_samples"))]
    lines += [line("samples", "samples", "5,000 vs 25,000 samples (CKA only)", math.nan, "fewer_samples",
                   "more_samples", "cka_only", **no_stitch)]
    lines += [line("training_time", "training time", f"epoch {e:g}", float(e), "top_epoch", "checkpoint", top=60.0,
                   penalty=(lambda c: 0.0) if e == 2 else (lambda c: c + 1.0)) for e in (1, 2, 4)]
    # Each direction's CKA differs (0.1 apart), so that a line mixing them would show.
    lines += [line("width_bottoms", "width: bottoms into the 1 top", f"width {w:g}", w, "width", "width_varied",
                   cka=lambda c, w=w: 0.9 - w / 10) for w in widths]
    lines += [line("width_tops", "width: the 1 bottom into tops", f"width {w:g}", w, "width_varied", "width",
                   top=50 + w, cka=lambda c, w=w: 0.8 - w / 10) for w in widths if w != 1.0]
    lines += [line("width_cka", "width", f"width {min(widths):g} vs {max(widths):g} (CKA only)", math.nan, "narrowest",
                   "widest", "cka_only", cka=lambda c: 0.75, **no_stitch)]
    curves = pd.DataFrame([dict(run=run, freeze=kind, frozen_stages=frozen, frozen_top_stages=0, epoch=step / 10,
                                step=step, test_error=error - step / 10 + i, pair_index=i, seed_top=2 * i,
                                seed_bottom=2 * i + 1)
                           for run, kind, frozen, error in (("normal training", "normal", 0, 60.0),
                                                            ("stages up to stem frozen", "prefix", 1, 61.0))
                           for i in range(2) for step in (10, 20, 30)])
    params = {"confidence": 0.95, "width": 1.0, "widths": list(widths), "top_epoch": 2.0, "top_samples": 10000,
              "fewer_samples": 5000}
    return _rows("more_is_better", lines), params, dict(curves=curves)


def _ablations():
    def line(panel_id, panel, pair, value=math.nan, **kw):
        return dict(dict(panel=panel, pair=pair, value=value, panel_id=panel_id, top_role="trained",
                         bottom_role="trained", comparison="stitch"), **kw)

    lines = [line("kernel_size", "kernel size", "k = 1", 1.0),
             line("kernel_size", "kernel size", "k = 3", 3.0, cuts=RESNET[:-1])]  # no k x k on the pooled vector
    lines += [line("bn_policy", "BatchNorm policy", pair) for pair in ("frozen: eval mode (default)",
                                                                      "drift: train mode, as the original code")]
    lines += [line("init", "initialisation", pair, init=lambda c, k=k: c + 5.0 * k)
              for k, pair in enumerate(("least squares (default)", "random"), 1)]
    # Section 3's panels: the unchanged pair beside the changed one (no permuted pooled vector).
    lines += [line(panel_id, panel, pair, bottom_role=role, cuts=cuts, cka=cka)
              for panel_id, panel, changed, cuts, cka in (
                  ("useless_coordinates", "useless coordinates", "+ 1 x channels of Gaussian noise", RESNET,
                   lambda c: 0.5 - c / 10),
                  ("permuted_positions", "permuted positions", "spatial positions permuted", RESNET[:-1], None))
              for pair, role, cka in (("unchanged", "trained", None), (changed, "transformed", cka))]
    lines += [line("random_bn", "random control's BatchNorm", pair, bottom_role="random", penalty=lambda c: 10.0 * c)
              for pair in ("running statistics (eval mode, as 01)",
                           "batch statistics (train mode, as the authors' code)")]
    lines += [line("finetune", "fine-tuning vs stitching", "stitching", bottom_role="random", cuts=SMALL, top=30.0),
              line("finetune", "fine-tuning vs stitching", "fine-tuning", bottom_role="random", comparison="finetune",
                   cuts=SMALL, top=30.0, init=None)]
    rows = _rows("ablations", lines)
    # Convergence: the first pair only, each start at 4, 15 and 64 stitcher steps.
    conv = _rows("ablations", [line("convergence", "stitcher convergence", start, float(n),
                                    penalty=lambda c, n=n: c + 60 / n)
                               for start in ("least-squares start", "random start") for n in (4, 15, 64)])
    rows = pd.concat([rows, conv[conv["pair_index"] == 0]], ignore_index=True)
    return rows, {"confidence": 0.95, "finetune_arch": {"width": 0.25, "depth": 11}}, {}


EXPERIMENTS = {"connectivity": _connectivity, "ssl_vs_e2e": _ssl, "label_noise": _label_noise,
               "more_is_better": _more_is_better, "ablations": _ablations}
FIGURES = {"connectivity": ["fig2a_connectivity", "fig5_cka", "cka_layers"],
           "ssl_vs_e2e": ["fig6_ssl_vs_e2e", "fig2b_imagenet"], "label_noise": ["fig3a_label_noise"],
           "more_is_better": ["fig2c_samples", "fig3b_training_time", "fig3c_width", "fig7_more_cka", "fig9_freeze"],
           "ablations": ["fig4_kernel_size", "fig8_finetuning", "ablation_bn_init", "section3_cka_vs_stitching",
                         "ablation_random_bn", "ablation_convergence"]}


def _summary(rows):
    return summary_table(SimpleNamespace(table=rows, setup=SimpleNamespace(params={"confidence": 0.95})))


def _figures(experiment, **changes):
    rows, params, extra = EXPERIMENTS[experiment](**changes)
    summary = _summary(rows)
    return figures_from_tables(experiment, rows, summary, params, caption=CAPTION, **extra), rows, summary


def _drawn(fig):
    """The labels of the lines drawn on the figure's axes, in order, once each."""
    return list(dict.fromkeys(line.get_label() for ax in fig.axes for line in ax.lines
                              if not line.get_label().startswith("_")))


def _lines(ax):
    return {line.get_label(): line for line in ax.lines}


def _flat(text):
    """A title as one line: titles are wrapped to their facet's width."""
    return " ".join(text.split())


@pytest.mark.parametrize("experiment", list(EXPERIMENTS))
def test_every_figure_renders_from_tables_fit_for_a_7_inch_page(experiment):
    figures, rows, summary = _figures(experiment)
    # The synthetic tables have the real ones' columns.
    assert list(rows.columns) == _KEYS[experiment] + _VALUES
    assert list(summary.columns) == [c for c in _KEYS[experiment] if c not in _PAIR] + _SUMMARY
    assert list(figures) == FIGURES[experiment]
    for name, fig in figures.items():
        width, _ = fig.get_size_inches()
        assert width <= 7.0, name
        # The caption names the data (ImageNet's figure, its own).
        data = "ImageNet" if name == "fig2b_imagenet" else CAPTION.split(";")[0]
        assert data in _flat(fig._suptitle.get_text()), name
        # One legend for the figure, none on the axes, listing exactly the lines drawn.
        assert not [ax for ax in fig.axes if ax.get_legend() is not None], name
        if name != "cka_layers":
            labels = _shared_labels(fig)
            assert len(labels) == len(set(labels)) and set(labels) == set(_drawn(fig)), name
        data_axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        assert all(ax.get_xlabel() for ax in data_axes if ax.get_subplotspec().is_last_row()), name
        assert all(ax.get_ylabel() for ax in data_axes if ax.get_subplotspec().is_first_col()), name
        # Saved as save_figure does (tick labels exist once drawn): no wider than the page either.
        png = io.BytesIO()
        fig.savefig(png, dpi=150, bbox_inches="tight")
        assert Image.open(png).size[0] <= 7.0 * 150, name
        small = [(t.get_text(), t.get_fontsize()) for t in fig.findobj(matplotlib.text.Text)
                 if t.get_visible() and t.get_text().strip() and t.get_fontsize() < 7]
        assert not small, (name, small)


def test_connectivity_marks_the_top_alone_and_lists_only_what_each_panel_draws():
    figures, _, _ = _figures("connectivity")
    fig = figures["fig2a_connectivity"]
    titles = [_flat(ax.get_title()) for ax in fig.axes]
    # The tops' own errors (49 and 51% for the two pairs): their mean, under each penalty facet.
    assert titles[0] == "ResNet-18: after training top alone: 50.0% test error"
    assert titles[1] == "ViT (trained on CIFAR-10, not CIFAR-5m): after training top alone: 40.0% test error"
    assert titles[3] == "ResNet-18: at least-squares init top alone: 50.0% test error"
    assert _shared_labels(fig) == ["0.5x, another seed", "0.5x, random network", "1x, another seed",
                                   f"{TOP_ALONE} (its test error in each title)", "paper: up to 3 points"]
    # The disjoint panel has no random network: none drawn there.
    disjoint = fig.axes[2]
    assert disjoint.get_title().startswith("ResNet-18, disjoint halves")
    assert [line.get_label() for line in disjoint.lines][:1] == ["0.5x, another seed"]
    assert "random network" not in " ".join(line.get_label() for line in disjoint.lines)
    # The paper's bound only where its claim is: after training.
    assert "paper: up to 3 points" in _lines(fig.axes[0]) and "paper: up to 3 points" not in _lines(fig.axes[3])
    assert [_flat(ax.get_ylabel()) for ax in fig.axes] == ["stitching penalty (points)", "", "",
                                                           "stitching penalty (points)", "", ""]
    cka = figures["fig5_cka"]
    assert TOP_ALONE not in " ".join(_shared_labels(cka)) and cka.axes[0].get_ylim() == (0, 1.05)
    assert figures["cka_layers"].axes[0].get_xlabel() == "cut of seed 1"


def test_fig6_draws_one_cka_line_for_sss_and_e2e():
    figures, _, summary = _figures("ssl_vs_e2e")
    fig = figures["fig6_ssl_vs_e2e"]
    penalty, _, cka = fig.axes
    directions = ["two supervised seeds", "SSS bottom into E2E top", "E2E bottom into SSS top"]
    assert [label for label in _lines(penalty) if not label.startswith(("0:", "paper"))] == directions
    # CKA is symmetric: one line for both directions, at their (equal) values.
    data = [line for line in cka.lines if not line.get_label().startswith("paper")]
    assert [line.get_label() for line in data] == ["two supervised seeds", "SSS and E2E (CKA: either direction)"]
    sss = summary[(summary["panel_id"] == "cifar10") & (summary["bottom_role"] == "sss")]
    assert list(data[1].get_ydata()) == pytest.approx(list(sss["cka"]))
    # The paper's range of SSS-E2E CKA, dashed at both ends; each direction's own top error.
    assert sorted(line.get_ydata()[0] for line in cka.lines if line.get_label().startswith("paper")) == [0.35, 0.9]
    assert _flat(penalty.get_title()) == "after training tops alone: E2E 50.0%, SSS 60.0%"
    assert "CIFAR-10, ResNet-18" in fig._suptitle.get_text()
    assert _flat(figures["fig2b_imagenet"].axes[0].get_title()) == "after training top alone: 23.0% test error"


def test_more_is_better_names_the_identity_and_keeps_width_directions_apart():
    figures, _, summary = _figures("more_is_better")
    labels = _shared_labels(figures["fig3b_training_time"])
    assert labels[:3] == ["epoch 1", "epoch 2 (identity: the top itself)", "epoch 4"]
    # Fig. 7's width panel: one line per direction and width (never the mean of two pairs), each
    # at its own pair's CKA, and the CKA-only pair of the narrowest and widest models.
    width = figures["fig7_more_cka"].axes[2]
    assert width.get_title() == "width: CKA"
    lines = {label: line for label, line in _lines(width).items() if not label.startswith("paper")}
    assert list(lines) == ["bottom width 0.5 into top width 1", "bottom width 1 into top width 1",
                           "bottom width 2 into top width 1", "bottom width 1 into top width 0.5",
                           "bottom width 1 into top width 2", "width 0.5 vs 2 (CKA only)"]
    assert all(len(line.get_xdata()) == len(RESNET) for line in lines.values())
    for label, (panel_id, value) in {"bottom width 0.5 into top width 1": ("width_bottoms", 0.5),
                                     "bottom width 1 into top width 0.5": ("width_tops", 0.5)}.items():
        pair = summary[(summary["panel_id"] == panel_id) & (summary["value"] == value)]
        assert list(lines[label].get_ydata()) == pytest.approx(list(pair["cka"]))
    assert sorted(line.get_ydata()[0] for line in width.lines if line.get_label().startswith("paper")) == [0.7, 0.9]
    # Each width panel of Fig. 3C names its tops' errors (one per top width in the reverse direction).
    title = _flat(figures["fig3c_width"].axes[1].get_title())
    assert title.endswith("tops alone: width 0.5 50.5%, width 2 52.0%")
    freeze = figures["fig9_freeze"]
    assert _shared_labels(freeze) == ["normal training", "stages up to stem frozen",
                                      "paper: final error within 3 points of normal training's"]
    # Normal training's final error (mean over the pairs: 57.5) + 3.
    assert _lines(freeze.axes[0])["paper: final error within 3 points of normal training's"].get_ydata()[0] == 60.5


def test_fig7_draws_the_cka_only_pair_once_when_it_is_a_stitched_pair():
    """With the 1x model the widest, the narrowest-widest pair is the 1x bottom in the narrowest top."""
    figures, _, _ = _figures("more_is_better", widths=(0.5, 1.0))
    width = figures["fig7_more_cka"].axes[2]
    assert [label for label in _lines(width) if not label.startswith("paper")] == [
        "bottom width 0.5 into top width 1", "bottom width 1 into top width 1", "bottom width 1 into top width 0.5"]


def test_ablations_say_which_init_each_line_had_and_why_k_1_stands_alone():
    figures, _, _ = _figures("ablations")
    kernel = figures["fig4_kernel_size"]
    assert _flat(kernel.legends[0].get_title().get_text()) == ("pooled-vector cut (pool): only k = 1 (a k x k kernel "
                                                               "needs a feature map)")
    assert list(_lines(kernel.axes[0])["k = 3"].get_xdata()) == [0, 1, 2]
    bn_init = figures["ablation_bn_init"]
    assert [_flat(ax.get_title()).split(" top alone")[0] for ax in bn_init.axes] == [
        "BatchNorm policy: after training", "initialisation: after training", "BatchNorm policy: at initialisation",
        "initialisation: at initialisation"]
    assert _shared_labels(bn_init)[:4] == [
        "BatchNorm frozen: eval mode (default), init: least squares",
        "BatchNorm drift: train mode, as the original code, init: least squares", "init: least squares (default)",
        "init: random"]
    # Fine-tuning is not stitching: no "stitching penalty" anywhere in Fig. 8.
    finetuning = figures["fig8_finetuning"]
    assert _flat(finetuning.axes[0].get_ylabel()) == "test error minus the trained top's (points)"
    assert not [t for t in finetuning.findobj(matplotlib.text.Text) if "penalty" in t.get_text()]
    assert _flat(finetuning.axes[0].get_title()) == "top alone: 30.0% test error"


@pytest.mark.parametrize("experiment,column,figure", [
    ("connectivity", "penalty_init", "fig2a_connectivity"), ("ssl_vs_e2e", "top_role", "fig6_ssl_vs_e2e"),
    ("label_noise", "cka", "fig3a_label_noise"), ("more_is_better", "panel_id", "fig7_more_cka"),
    ("ablations", "cut", "fig4_kernel_size")])
def test_a_table_without_a_figures_columns_is_refused_by_name(experiment, column, figure):
    rows, params, extra = EXPERIMENTS[experiment]()
    summary = _summary(rows).drop(columns=[column])
    with pytest.raises(ValueError, match=rf"{figure}.*lacks the columns \['{column}'\]"):
        figures_from_tables(experiment, rows, summary, params, **extra)


def test_freeze_curves_and_cka_matrix_are_checked_too():
    rows, params, extra = _more_is_better()
    with pytest.raises(ValueError, match=r"fig9_freeze: the freeze-training curves table lacks the columns \['step'\]"):
        figures_from_tables("more_is_better", rows, _summary(rows), params, curves=extra["curves"].drop(columns="step"))
    rows, params, extra = _connectivity()
    with pytest.raises(ValueError, match=r"cka_layers: the CKA matrix table lacks the columns \['cut_b'\]"):
        figures_from_tables("connectivity", rows, _summary(rows), params,
                            cka_matrix=extra["cka_matrix"].drop(columns="cut_b"))


def test_a_line_never_averages_two_pairs():
    """Two pairs under one label would make a line with two points per cut: refused."""
    frame = pd.DataFrame(dict(pair=["width 1", "width 1"], cut_index=[0, 0], cut=["stem", "stem"], penalty=[1.0, 2.0]))
    with pytest.raises(ValueError, match="line 'width 1' has several rows at one cut_index"):
        facet_grid({"width": frame}, ["penalty"], "t", hue="pair", figure="fig3c_width")
