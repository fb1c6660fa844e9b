"""Figures for a 7-inch-wide page, drawn from tables alone: the per-cut summary (means over the
seed pairs with their intervals), the rows (for each top model's own error) and the run's
parameters (`figures_from_tables`; `plot` does the same from a run's results and saves them).
Saved as PNG and PDF with fixed metadata so that the same results give the same bytes."""

from __future__ import annotations

import itertools
import math
import os
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .paper import paper_value
from .statistics import interval

__all__ = ["plot", "save_figure", "figures_from_tables", "FigureData", "facet_grid", "Reference", "Relative"]

_FIXED_METADATA = {
    ".png": {"Software": None},
    ".pdf": {"Creator": None, "Producer": None, "CreationDate": None},
}


def save_figure(fig, folder: Path, name: str, record=None) -> list[Path]:
    """Write `name`.png and `name`.pdf into `folder`, each atomically (temp file + rename), and
    their record `name`.record.json (`stitchlib.record`) beside them. `record`: the run (`Setup`)
    the figure shows (None: no run; the record has the machine and code only).
    Returns the figure's paths."""
    from . import record as record_mod

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, meta in _FIXED_METADATA.items():
        target = folder / f"{name}{ext}"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}", suffix=ext)
        os.close(fd)
        try:
            fig.savefig(tmp, dpi=150, metadata=meta, bbox_inches="tight")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        paths.append(target)
    record_mod.write_for(paths, record)
    return paths


_DATASET_NAMES = {"cifar10": "CIFAR-10", "fashion_mnist": "Fashion-MNIST"}


def data_caption(setup) -> str:
    """Name the data honestly: the lossy JPEG copy is not the paper's CIFAR-10."""
    ident = setup.dataset.identity
    name = _DATASET_NAMES.get(ident["name"], ident["name"])
    if "jpeg" in ident["source"].lower():
        name += " (JPEG copy)"
    if "vit" in setup.params.get("architectures", {}):
        name += "; the ViT is trained on it, not on CIFAR-5m as in the paper"
    return f"{name} [{setup.profile}]"


# ------------------------------------------------------------------ page geometry and style
# Every figure is made at its final size for a 7-inch-wide page, so that no text is smaller
# than 7 pt once printed: nothing is scaled down afterwards.
PAGE_WIDTH = 7.0      # inches
PAGE_HEIGHT = 9.0     # inches of text on that page: a figure of many facets shrinks them to fit
_MAX_COLUMNS = 3      # facets per row: at 7 inches, a fourth would leave too little room for 10 cut names
_ROW_HEIGHT = 2.5     # inches per row of facets: the axes, their two-line title and rotated cut names
_SIZES = dict(suptitle=9, title=8, label=8, tick=7, legend=7)
_STYLE = {**sns.axes_style("ticks"), "font.size": _SIZES["label"], "axes.titlesize": _SIZES["title"],
          "axes.labelsize": _SIZES["label"], "xtick.labelsize": _SIZES["tick"], "ytick.labelsize": _SIZES["tick"],
          "legend.fontsize": _SIZES["legend"], "legend.title_fontsize": _SIZES["legend"],
          "figure.titlesize": _SIZES["suptitle"], "figure.labelsize": _SIZES["label"], "lines.linewidth": 1.0,
          "lines.markersize": 3}


# Margins (inches) as wide as save_figure's tight-bbox padding of 0.1 inch, which then saves the
# figure at the size it was made.
_PADS = dict(w_pad=0.12, h_pad=0.1)


def _figure(ncols: int, nrows: int) -> plt.Figure:
    """A figure as wide as its columns need, never wider than the page; constrained layout keeps
    the titles, labels and the shared legend inside it (`_suptitle` and `_shared_legend` add
    their height), so that the saved file has this size."""
    width = min(PAGE_WIDTH, 1.0 + 2.4 * ncols)
    # About 1.3 inches go to the title and the legend.
    fig = plt.figure(figsize=(width, nrows * min(_ROW_HEIGHT, (PAGE_HEIGHT - 1.3) / nrows)), layout="constrained")
    fig.get_layout_engine().set(**_PADS)
    return fig


def _wrap(text: str, width: float, size: float) -> str:
    """`text` broken into lines that fit `width` inches at `size` points (a character of the
    default sans-serif font is about 0.55 em wide on average), keeping its own line breaks."""
    chars = max(12, int(width * 72 / (0.55 * size)))
    return "\n".join(textwrap.fill(line, chars, break_on_hyphens=False) for line in text.split("\n"))


def _suptitle(fig: plt.Figure, title: str) -> None:
    """The figure's title, wrapped to its width; the figure grows by its lines, so the facets keep
    their size however long the caption."""
    title = _wrap(title, fig.get_figwidth() - 0.2, _SIZES["suptitle"])
    fig.suptitle(title, fontsize=_SIZES["suptitle"])
    fig.set_figheight(fig.get_figheight() + 0.1 + (title.count("\n") + 1) * 1.25 * _SIZES["suptitle"] / 72)


def _shared_legend(fig: plt.Figure, handles: dict, note: str = "") -> None:
    """One legend for the whole figure, below its facets (never on a curve), listing each label
    drawn once (`handles`: label -> line, in the order to list them), in as many columns as fit
    the figure's width; `note`, a remark on the whole figure, heads it. (Below the facets, not
    beside a figure-wide x label or title: constrained layout does not keep those apart.)"""
    if not handles and not note:
        return
    title = _wrap(note, fig.get_figwidth() - 0.3, _SIZES["legend"]) if note else None
    # The widest that fits inside the layout's margins (and save_figure's), so the file stays as wide;
    # 5% to spare, as text is up to that much wider at another dpi (hinting).
    room = 0.95 * (fig.get_figwidth() - 0.3) * fig.dpi
    for ncol in range(max(1, min(len(handles), 3)), 0, -1):
        legend = fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=ncol,
                            fontsize=_SIZES["legend"], title=title, title_fontsize=_SIZES["legend"], frameon=False)
        if ncol == 1 or legend.get_window_extent().width <= room:
            break
        legend.remove()
    # The figure grows by the legend's height: the facets keep their size however long the legend.
    fig.set_figheight(fig.get_figheight() + legend.get_window_extent().height / fig.dpi)


def _finish(fig: plt.Figure) -> plt.Figure:
    # Tick labels are made again when the figure is drawn, from the rc settings of that moment:
    # fixing their size on each axes keeps 7 pt whatever the caller's style is by then.
    for ax in fig.axes:
        ax.tick_params(labelsize=_SIZES["tick"])
    return fig


def _require(frame: pd.DataFrame, columns, figure: str, what: str = "summary") -> None:
    """A figure asked of a table without the columns it reads: say which, and of which figure."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{figure}: the {what} table lacks the columns {missing} (it has {list(frame.columns)})")


# ------------------------------------------------------------------ facets of per-cut lines

# value column -> (what the row shows, its y label)
_ROWS = {"penalty": ("after training", "stitching penalty (points)"),
         "penalty_init": ("at least-squares init", "stitching penalty (points)"),
         "cka": ("CKA", "linear CKA(top, bottom)")}
_DASHES = ["-", "--", ":", "-."]
# Ten distinct colours, then their light shades: Fig. 7 draws 13 lines at the paper's profile.
_PALETTE = sns.color_palette("tab10") + sns.color_palette("tab20")[1::2]
# The zero of a penalty is the top model alone; its test error, where known, is in each facet's title.
TOP_ALONE = "0: the top model alone"


class Reference(NamedTuple):
    """The paper's number(s), drawn dashed: a horizontal line at each of `ys` on the value rows
    `values` of the panels `panels` (None: every panel)."""

    ys: tuple
    label: str
    values: tuple = ("penalty",)
    panels: tuple | None = None


class Relative(NamedTuple):
    """The paper's bound on a difference from one line: the `hue` level `level`'s curve shifted
    by each of `offsets`, dashed, on the trained stitcher's row, over the x values `over` (None:
    all) that the claim averages."""

    level: str
    offsets: tuple
    label: str
    over: tuple | None = None


def _top_alone(frame: pd.DataFrame, key: str) -> str:
    """The top models' own test error (mean over the seed pairs) for the lines in `frame`: one
    number when they share their top, else one per top named by the column `key`."""
    if "top_error" not in frame or frame["top_error"].isna().all():
        return ""
    errors = frame.groupby(key, sort=False)["top_error"].mean().dropna().round(1)
    if errors.nunique() == 1:
        return f"top alone: {errors.iloc[0]:.1f}% test error"
    return "tops alone: " + ", ".join(f"{name} {error:.1f}%" for name, error in errors.items())


def facet_grid(panels: dict[str, pd.DataFrame], values: list[str], title: str, *, hue: str, style: str | None = None,
               references: tuple = (), relative: Relative | None = None, rows: dict | None = None,
               top_name: str | None = None, x: str = "cut_index", xlabel: str = "cut point (bottom ends after)",
               note: str = "", figure: str = "figure") -> plt.Figure:
    """Facets of lines: one per value column in `values` ("penalty", "penalty_init", "cka" or any
    column of `rows`: value -> (what the facet shows, y label)) and entry of `panels` (name ->
    summary rows: the mean over seed pairs per cut, with `<value>_low/_high` drawn as a band).
    Each `hue` (and `style`) level is one line, with the same colour and dash in every facet, and
    must have one row per `x` (a line never averages two pairs). With several panels, each value
    is a block of rows, its panels wrapped into at most three columns; one panel's values sit
    side by side, under its name in the figure's title. Facets of one value share their y axis.

    Penalty facets draw the zero line (the top model alone: its test error, from the rows'
    `top_error` when present, goes into the facet's title, per `top_name` level when the lines
    have different tops) and the paper's numbers: `references` (`Reference`) and `relative`
    (`Relative`). One legend below the facets lists each label drawn once. `x` is "cut_index"
    (ticks named by the `cut` column) or any numeric column; `note`, a remark on the whole
    figure, heads the legend. `figure` names the figure in errors."""
    rows = {**_ROWS, **(rows or {})}
    needed = [hue, *([style] if style else []), x, *(["cut"] if x == "cut_index" else []), *values]
    for name, frame in panels.items():
        _require(frame, needed, figure, f"panel {name!r}'s")
    # Colours and dashes by level over every facet's drawn rows, so that a label means one line.
    frames = [f[f[values].notna().any(axis=1)] for f in panels.values()]
    colors = dict(zip(dict.fromkeys(level for f in frames for level in f[hue]), itertools.cycle(_PALETTE)))
    dashes = dict(zip(dict.fromkeys(s for f in frames for s in f[style]), itertools.cycle(_DASHES))) if style else {}

    names = list(panels)
    ncols = min(_MAX_COLUMNS, len(names) if len(names) > 1 else len(values))
    if len(names) > 1:
        block = -(-len(names) // ncols)  # grid rows per value
        places = {(v, n): (i * block + j // ncols, j % ncols)
                  for i, v in enumerate(values) for j, n in enumerate(names)}
    else:
        places = {(v, names[0]): divmod(i, ncols) for i, v in enumerate(values)}
    nrows = max(r for r, _ in places.values()) + 1
    fig = _figure(ncols, nrows)
    grid = fig.add_gridspec(nrows, ncols)
    # A facet's height for its y label: its share of the figure less its title and cut names (a
    # longer label reaches into them, where nothing else is).
    axis_height = fig.get_figheight() / nrows - 0.6
    value_at = {place: value for (value, _), place in places.items()}

    lines, marks, first = {}, {}, {}  # label -> handle: the data lines, then the zero and paper lines
    for (value, name), (r, c) in places.items():
        ax = fig.add_subplot(grid[r, c], sharey=first.get(value))
        first.setdefault(value, ax)
        # Facets of one value share their y axis: its label and numbers only where a row of them starts.
        labelled = value_at.get((r, c - 1)) != value
        # Its width for the title and the x label: its share of the figure less its y tick labels. A
        # title or x label wider than the axes reaches over the y labels, or the gap to the next facet,
        # but constrained layout makes no room for it past the figure's right edge: there, the width
        # is the axes' own.
        axis_width = fig.get_figwidth() / ncols - (0.8 if labelled and c == ncols - 1 else 0.45)
        what, ylabel = rows[value]
        frame = panels[name]
        frame = frame[frame[value].notna()]
        groups = [hue, style] if style else [hue]
        for key, f in frame.groupby(groups, sort=False):
            level, st = key if style else (key[0], None)
            label = f"{level}" + (f", {st}" if style else "")
            if f[x].duplicated().any():
                raise ValueError(f"{figure}: panel {name!r}, line {label!r} has several rows at one {x}: give each "
                                 f"compared pair its own {hue!r} label (a line never averages two pairs)")
            f = f.sort_values(x)
            color = colors[level]
            lines[label] = ax.plot(f[x], f[value], marker="o", color=color, ls=dashes.get(st, "-"), label=label)[0]
            if f"{value}_low" in f and f[f"{value}_low"].notna().any():
                ax.fill_between(f[x], f[f"{value}_low"], f[f"{value}_high"], color=color, alpha=0.15, lw=0)
        # One panel is named once, in the figure's title; its facets say what they show.
        heading = what if len(names) == 1 else f"{name}: {what}" if what else name
        if value == "cka":
            ax.set_ylim(0, 1.05)
        else:
            top = _top_alone(frame, top_name or hue)
            heading += f"\n{top}" if top else ""
            zero = f"{TOP_ALONE} (its test error in each title)" if top else TOP_ALONE
            marks[zero] = ax.axhline(0, color="0.6", lw=0.8, label=zero)
        for ref in references:
            if value in ref.values and (ref.panels is None or name in ref.panels):
                for y in ref.ys:
                    marks[ref.label] = ax.axhline(y, color="0.3", lw=0.8, ls="--", label=ref.label)
        if relative is not None and value == "penalty":  # the claims are about the trained stitcher
            base = frame[frame[hue] == relative.level].sort_values(x)
            if relative.over is not None:
                base = base[base[x].isin(relative.over)]
            for offset in relative.offsets:
                marks[relative.label] = ax.plot(base[x], base[value] + offset, color="0.3", lw=0.8, ls="--",
                                                label=relative.label)[0]
        ax.set_title(_wrap(heading, axis_width, _SIZES["title"]), fontsize=_SIZES["title"])
        if labelled:
            ax.set_ylabel(_wrap(ylabel, axis_height, _SIZES["label"]), fontsize=_SIZES["label"])
        else:
            ax.tick_params(labelleft=False)
        if x == "cut_index":
            cuts = frame[["cut_index", "cut"]].drop_duplicates().sort_values("cut_index")
            # Upright when the names stand closer than about 0.2 inch: slanted, they would touch.
            rotation = 90 if axis_width / max(len(cuts), 1) < 0.2 else 45
            ax.set_xticks(cuts["cut_index"], cuts["cut"], rotation=rotation, ha="right", rotation_mode="anchor")
        if (r + 1, c) not in value_at:  # the x label under each column's lowest facet
            ax.set_xlabel(_wrap(xlabel, axis_width, _SIZES["label"]), fontsize=_SIZES["label"])
    _suptitle(fig, title + (f"\n{names[0]}" if len(names) == 1 else ""))
    _shared_legend(fig, {**lines, **marks}, note)
    return _finish(fig)


def _titled(title: str, caption: str) -> str:
    return title + (f": {caption}" if caption else "")


def _paper(key: str, what: str = "paper") -> Reference:
    return Reference((paper_value(key),), f"{what} {paper_value(key):g} points")


def _paper_range(key: str, label: str, values=("cka",), panels=None) -> Reference:
    """The paper's range ("0.35-0.9") as its two ends."""
    low, high = (float(v) for v in paper_value(key).split("-"))
    return Reference((low, high), f"{label} {paper_value(key)}", values, panels)


# ------------------------------------------------------------------ the figures from tables

@dataclass(frozen=True)
class FigureData:
    """What an experiment's figures read besides the per-cut summary: the rows table (one row per
    seed pair and cut; its `top_error` gives each top model's own error, None when not at hand),
    the run's parameters, and where the experiment has them, the freeze-training curves (04) and
    the CKA matrix (01)."""

    table: pd.DataFrame | None
    params: dict
    curves: pd.DataFrame | None = None
    cka_matrix: pd.DataFrame | None = None


def _with_top_error(summary: pd.DataFrame, table: pd.DataFrame | None) -> pd.DataFrame:
    """The summary with the top models' test error, mean over the seed pairs of each of its rows
    (`summary_table` keeps only penalties and CKA)."""
    if table is None or "top_error" not in table or "top_error" in summary:
        return summary
    keys = [c for c in summary.columns if c in table.columns and c != "pairs" and not c.startswith(("penalty", "cka"))]
    tops = table.groupby(keys, sort=False, dropna=False)["top_error"].mean().reset_index()
    return summary.merge(tops, on=keys, how="left")  # a left merge keeps the summary's rows and order


def figures_from_tables(experiment: str, table: pd.DataFrame | None, summary: pd.DataFrame, params: dict, *,
                        curves: pd.DataFrame | None = None, cka_matrix: pd.DataFrame | None = None,
                        caption: str = "") -> dict:
    """The figures of `experiment` (name or notebook) from its tables alone, nothing loaded or
    computed: `summary` (`stitchlib.claims.summary_table`, or <notebook>_summary.csv), the rows
    `table` (<notebook>.csv; for the top models' errors, may be None), the run's `params`, 04's
    freeze-training `curves` (04_freeze_training.csv; Fig. 9 is left out without them) and 01's
    `cka_matrix` (01_cka_matrix.csv; its heatmap likewise). Returns the figures by name, unsaved
    (`save_figure`)."""
    from .experiments import experiment_named  # the experiments import this module

    data = FigureData(table, dict(params), curves, cka_matrix)
    with plt.rc_context(_STYLE):
        return experiment_named(experiment).figures(data, _with_top_error(summary, table), caption)


def plot(results, folder: Path | None = None, *, caption: str | None = None) -> dict:
    """The experiment's figures, saved as PNG and PDF into `folder` (default: the run's figures
    folder), each with its record (`stitchlib.record`): Figs. 2A, 5 and the CKA heatmap for
    connectivity, 6 (and 2B with ImageNet) for ssl_vs_e2e, 3A for label_noise, 2C, 3B, 3C, 7 and 9
    for more_is_better, 4, 8, the BatchNorm and initialisation ablations, Section 3's panels, the
    random control's BatchNorm and the stitcher's convergence for ablations. Lines are means over
    the seed pairs, bands their intervals (`stitchlib.claims.summary_table`), dashed lines the
    paper's numbers. Returns the figures by name and the paths written."""
    from .claims import summary_table  # claims reads experiments, which plotting need not load first

    folder = results.setup.figures if folder is None else folder
    caption = data_caption(results.setup) if caption is None else caption
    confidence = results.setup.params.get("confidence", 0.95)
    caption += f"; mean over seed pairs, bands: {confidence:.0%} intervals"
    figures = figures_from_tables(results.setup.experiment, results.table, summary_table(results),
                                  results.setup.params, curves=getattr(results, "curves", None),
                                  cka_matrix=getattr(results, "cka_matrix", None), caption=caption)
    paths = [path for name, fig in figures.items()
             for path in save_figure(fig, folder, name, record=results.setup)]
    return {**figures, "paths": paths}


def connectivity_figures(data: FigureData, t: pd.DataFrame, caption: str) -> dict:
    """Fig. 2A (stitching penalty per cut, another seed vs a random network, one panel per model;
    after training the stitcher and at its least-squares initialisation) and Fig. 5 (CKA)."""
    _require(t, ["family", "width", "bottom", "cut_index", "cut", "penalty", "penalty_init", "cka"],
             "fig2a_connectivity and fig5_cka")
    if data.cka_matrix is not None:
        _require(data.cka_matrix, _MATRIX_COLUMNS, "cka_layers", "CKA matrix")
    t = t.copy()
    t["width"] = t["width"].map(lambda w: f"{w:g}x")
    t["bottom"] = t["bottom"].map({"trained": "another seed", "random": "random network"})
    dataset = _DATASET_NAMES.get(data.params.get("dataset", "cifar10"), data.params.get("dataset"))
    # The paper trained its ViT on CIFAR-5m; this one sees the same data as the other panels.
    panels = {(f"{family} (trained on {dataset}, not CIFAR-5m)" if family == "ViT" else family): f
              for family, f in t.groupby("family", sort=False)}
    line = dict(hue="width", style="bottom", top_name="width")
    figures = {"fig2a_connectivity": facet_grid(panels, ["penalty", "penalty_init"],
                                                _titled("Stitching connectivity (Fig. 2A)", caption),
                                                references=(_paper("close", "paper: up to"),),
                                                figure="fig2a_connectivity", **line),
               "fig5_cka": facet_grid(panels, ["cka"], _titled("CKA at the same cuts (Fig. 5)", caption),
                                      figure="fig5_cka", **line)}
    if data.cka_matrix is not None:
        figures["cka_layers"] = cka_heatmap(data.cka_matrix, caption)
    return figures


_MATRIX_COLUMNS = ["family", "width", "seed_a", "seed_b", "cut_index_a", "cut_a", "cut_index_b", "cut_b", "cka"]


def cka_heatmap(matrix: pd.DataFrame, caption: str):
    """CKA between every cut of one seed (rows) and every cut of the other (columns): the
    layer-by-layer heatmap (Kornblith et al. 2019). Its diagonal is Fig. 5's line for that pair."""
    first = matrix.iloc[0]
    grid = matrix.pivot(index=["cut_index_a", "cut_a"], columns=["cut_index_b", "cut_b"], values="cka")
    fig = plt.figure(figsize=(4.6, 3.7), layout="constrained")  # and the title
    fig.get_layout_engine().set(**_PADS)
    ax = fig.add_subplot()
    sns.heatmap(grid.to_numpy(), vmin=0, vmax=1, cmap="viridis", square=True, ax=ax,
                xticklabels=[name for _, name in grid.columns], yticklabels=[name for _, name in grid.index])
    ax.collections[0].colorbar.set_label("linear CKA", fontsize=_SIZES["label"])
    ax.set_xlabel(f"cut of seed {first['seed_b']}", fontsize=_SIZES["label"])
    ax.set_ylabel(f"cut of seed {first['seed_a']}", fontsize=_SIZES["label"])
    # One seed pair, no interval: the data part of the caption only.
    data = caption.split("; mean over")[0]
    _suptitle(fig, f"CKA at every pair of cuts: {first['family']} {first['width']:g}x, seeds {first['seed_a']} and "
                   f"{first['seed_b']}" + (f": {data}" if data else ""))
    return _finish(fig)


def label_noise_figures(data: FigureData, t: pd.DataFrame, caption: str) -> dict:
    """Fig. 3A: each weak bottom into the clean top, penalty after training and at init, and CKA."""
    _require(t, ["pair", "bottom_role", "cut_index", "cut", "penalty", "penalty_init", "cka"], "fig3a_label_noise")
    # The claim: over the first half of the cuts, a weak bottom's penalty is within 3 points of the
    # clean seed's (the paper's 'close'); drawn as the clean curve + 3 there.
    bound = paper_value("label_early")
    first_half = sorted(t["cut_index"].unique())[: t["cut_index"].nunique() // 2]
    clean = t[t["bottom_role"] == "clean"]["pair"]
    relative = None if clean.empty else Relative(
        clean.iloc[0], (bound,), f"paper: clean + {bound:g} points (claim: mean over these cuts)", tuple(first_half))
    fig = facet_grid({"bottoms into a clean-label top": t}, ["penalty", "penalty_init", "cka"],
                     _titled("Changing the label distribution (Fig. 3A)", caption), hue="pair", relative=relative,
                     figure="fig3a_label_noise")
    return {"fig3a_label_noise": fig}


def _freeze_figure(curves: pd.DataFrame, params: dict, caption: str) -> plt.Figure:
    """Fig. 9: test error against SGD steps of each freeze-training run, the mean over the seed
    pairs with its interval, and the paper's bound on the final error (normal training's + 3)."""
    confidence = params.get("confidence", 0.95)
    fig = _figure(1, 1)
    ax = fig.add_subplot()
    handles = {}
    for (run, f), color in zip(curves.groupby("run", sort=False), itertools.cycle(_PALETTE)):
        steps, means, lows, highs = [], [], [], []
        for step, g in f.groupby("step"):
            # The same interval as the other figures' bands: over the seed pairs, and over the test
            # images where the curves still hold which images each run got wrong.
            per_image = list(g["_wrong"]) if "_wrong" in g and all(w is not None for w in g["_wrong"]) else None
            iv = interval(g["test_error"], per_image, confidence=confidence) if len(g) > 1 or per_image else None
            steps.append(step)
            means.append(g["test_error"].mean())
            lows.append(iv.low if iv else math.nan)
            highs.append(iv.high if iv else math.nan)
        handles[run] = ax.plot(steps, means, marker="o", color=color, label=run)[0]
        ax.fill_between(steps, lows, highs, color=color, alpha=0.15, lw=0)
    normal = curves[curves["freeze"] == "normal" if "freeze" in curves else curves["run"] == "normal training"]
    if not normal.empty:
        final = normal[normal["step"] == normal["step"].max()]["test_error"].mean()
        label = f"paper: final error within {paper_value('freeze'):g} points of normal training's"
        handles[label] = ax.axhline(final + paper_value("freeze"), color="0.3", lw=0.8, ls="--", label=label)
    ax.set_xlabel("SGD steps on all training images", fontsize=_SIZES["label"])
    ax.set_ylabel("test error (%)", fontsize=_SIZES["label"])
    _suptitle(fig, _titled("Freeze training (Fig. 9)", caption))
    _shared_legend(fig, handles)
    return _finish(fig)


def _width_lines(t: pd.DataFrame, width: float, widths: list) -> pd.DataFrame:
    """The width panel's rows, each line named by its direction (the pairs' own labels, "width w",
    give the varied width exactly): two directions hold the same widths, and a line must not mix
    them. `top` names each line's top model."""
    t = t.copy()
    bottoms, tops = t["panel_id"] == "width_bottoms", t["panel_id"] == "width_tops"
    t.loc[bottoms, "line"] = "bottom " + t.loc[bottoms, "pair"] + f" into top width {width:g}"
    t.loc[tops, "line"] = f"bottom width {width:g} into top " + t.loc[tops, "pair"]
    t.loc[bottoms, "top"] = f"width {width:g}"
    t.loc[tops, "top"] = t.loc[tops, "pair"]
    cka_only = t["panel_id"] == "width_cka"
    t.loc[cka_only, "line"] = t.loc[cka_only, "pair"]
    if width in (min(widths), max(widths)):
        # The CKA-only pair (the narrowest model of the top seed, the widest of the bottom seed) is
        # then one of the stitched pairs: drawn once.
        t = t[~cka_only]
    return t


def more_is_better_figures(data: FigureData, t: pd.DataFrame, caption: str) -> dict:
    """Figs. 2C (samples), 3B (training time), 3C (width, both directions), 7 (CKA for the
    three) and 9 (freeze training, when the curves are given)."""
    figure = "fig2c_samples, fig3b_training_time, fig3c_width and fig7_more_cka"
    _require(t, ["pair", "value", "panel_id", "cut_index", "cut", "penalty", "penalty_init", "cka"], figure)
    p = data.params
    missing = [k for k in ("width", "widths", "top_epoch", "top_samples", "fewer_samples") if k not in p]
    if missing:
        raise ValueError(f"{figure}: the parameters lack {missing}")
    if data.curves is not None:
        _require(data.curves, ["run", "step", "test_error"], "fig9_freeze", "freeze-training curves")
    t = t.copy()
    t["line"] = t["pair"]
    # A checkpoint at the top's own epoch is the top itself: its line is the identity's penalty.
    identity = (t["panel_id"] == "training_time") & (t["value"] == float(p["top_epoch"]))
    t.loc[identity, "line"] = t.loc[identity, "pair"] + " (identity: the top itself)"

    def panel(*ids):
        return t[t["panel_id"].isin(ids)]

    width = _width_lines(panel("width_bottoms", "width_tops", "width_cka"), p["width"], p["widths"])
    directions = {f"bottoms into the {p['width']:g} top": width[width["panel_id"] == "width_bottoms"],
                  f"the {p['width']:g} bottom into tops": width[width["panel_id"] == "width_tops"]}
    checkpoints = f"checkpoints into the epoch {p['top_epoch']:g} top"
    values, line = ["penalty", "penalty_init"], dict(hue="line")
    samples = {f"bottoms into the {p['top_samples']:,}-sample top": panel("samples")}
    if not panel("samples_reversed").empty:  # Appendix B.4's opposite pair, which picks the top layers to freeze
        samples[f"reversed: into the {p['fewer_samples']:,}-sample top (B.4)"] = panel("samples_reversed")
    figures = {
        "fig2c_samples": facet_grid(samples, values, _titled("More samples (Fig. 2C)", caption),
                                    figure="fig2c_samples", **line),
        "fig3b_training_time": facet_grid({checkpoints: panel("training_time")}, values,
                                          _titled("More training time (Fig. 3B)", caption),
                                          figure="fig3b_training_time", **line),
        "fig3c_width": facet_grid(directions, values, _titled("More width (Fig. 3C)", caption), top_name="top",
                                  figure="fig3c_width", **line),
        "fig7_more_cka": facet_grid({"samples": panel("samples"), checkpoints: panel("training_time"), "width": width},
                                    ["cka"], _titled("More is similar with CKA? (Fig. 7)", caption),
                                    references=(_paper_range("cka_width_range", "paper, CKA of 0.25x vs 2x width:",
                                                             panels=("width",)),),
                                    figure="fig7_more_cka", **line),
    }
    if data.curves is not None:
        figures["fig9_freeze"] = _freeze_figure(data.curves, p, caption)
    return figures


ABLATION_PANELS = ("kernel_size", "finetune", "bn_policy", "init")


def ablation_figures(data: FigureData, t: pd.DataFrame, caption: str) -> dict:
    """Fig. 4 (kernel size), Fig. 8 (fine-tuning vs stitching a random bottom), the two
    ablations the paper could not run (BatchNorm policy and the stitcher's initialisation), and
    where the table has them, Section 3's two arguments, the random control's BatchNorm statistics
    and the stitcher's convergence (`_section3_figures`)."""
    figure = "fig4_kernel_size, fig8_finetuning and ablation_bn_init"
    _require(t, ["panel_id", "pair", "value", "cut_index", "cut", "penalty", "penalty_init"], figure)
    panels = {name: f.copy() for name, f in t.groupby("panel_id", sort=False)}
    missing = [name for name in ABLATION_PANELS if name not in panels]
    if missing:
        raise ValueError(f"{figure}: the summary lacks the panels (panel_id) {missing}")
    kernel = panels["kernel_size"]
    # The kernel claim averages the cuts every k stitches (feature maps, not the pooled vector).
    stitched = kernel[kernel["penalty"].notna()]
    maps = sorted(stitched[stitched["value"] != 1]["cut_index"].unique())
    pooled = sorted(set(stitched[stitched["value"] == 1]["cut"]) - set(stitched[stitched["value"] != 1]["cut"]))
    ones = kernel[kernel["value"] == 1]["pair"]
    bound = paper_value("kernel")
    depth = data.params.get("finetune_arch", {}).get("depth", 164)
    # Which stitcher start each line had: the BatchNorm panel ran from the default least squares.
    panels["bn_policy"]["line"] = "BatchNorm " + panels["bn_policy"]["pair"] + ", init: least squares"
    panels["init"]["line"] = "init: " + panels["init"]["pair"]
    return {
        # The claim: each k's penalty within 3 points of k = 1's (drawn as k = 1's curve +- 3).
        "fig4_kernel_size": facet_grid(
            {"k x k stitchers, each trained at lr / k": kernel}, ["penalty"],
            _titled("Stitcher kernel size (Fig. 4)", caption), hue="pair",
            relative=None if ones.empty else Relative(
                ones.iloc[0], (-bound, bound), f"paper: k = 1 +- {bound:g} points (claim: mean over these cuts)",
                tuple(maps) or None),
            note=f"pooled-vector cut ({', '.join(pooled)}): only k = 1 (a k x k kernel needs a feature map)"
            if pooled else "", figure="fig4_kernel_size"),
        # Fine-tuning is no stitching: a neutral name for what both lines measure.
        "fig8_finetuning": facet_grid(
            {f"ResNet-{depth}: random bottom, trained top": panels["finetune"]}, ["penalty"],
            _titled("Fine-tuning vs stitching (Fig. 8)", caption), hue="pair",
            rows={"penalty": ("", "test error minus the trained top's (points)")}, figure="fig8_finetuning"),
        "ablation_bn_init": facet_grid(
            {"BatchNorm policy": panels["bn_policy"], "initialisation": panels["init"]}, ["penalty", "penalty_init"],
            _titled("BatchNorm policy and initialisation", caption), hue="line",
            rows={"penalty_init": ("at initialisation", "stitching penalty (points)")}, figure="ablation_bn_init"),
        **_section3_figures(panels, caption),
    }


def _section3_figures(panels: dict, caption: str) -> dict:
    """The panels added for issue 14, where the table has them (older tables lack them): Section
    3's two arguments, the random control's BatchNorm statistics, and the stitcher's convergence."""
    figures = {}
    changed = {name: panels[key] for key, name in (("useless_coordinates", "useless Gaussian coordinates"),
                                                   ("permuted_positions", "permuted spatial positions"))
               if key in panels}
    if changed:
        figures["section3_cka_vs_stitching"] = facet_grid(
            changed, ["penalty", "cka"], _titled("CKA and stitching on a changed representation (Section 3)", caption),
            hue="pair", note="the pooled vector has no positions to permute: that cut is skipped"
            if "permuted_positions" in panels else "", figure="section3_cka_vs_stitching")
    if "random_bn" in panels:
        figures["ablation_random_bn"] = facet_grid(
            {"untrained bottom into a trained top": panels["random_bn"]}, ["penalty", "penalty_init"],
            _titled("The random control's BatchNorm statistics", caption), hue="pair",
            references=(_paper("random_late", "paper's 'close' bound, which the control should exceed:"),),
            rows={"penalty_init": ("at initialisation", "stitching penalty (points)")}, figure="ablation_random_bn")
    if "convergence" in panels:
        conv = panels["convergence"]
        # A facet per cut would be ten; the first, the middle and the last cut show the trend.
        cuts = conv[["cut_index", "cut"]].drop_duplicates().sort_values("cut_index")
        picks = cuts.iloc[sorted({0, (len(cuts) - 1) // 2, len(cuts) - 1})]
        fig = facet_grid({f"cut {c.cut}": conv[conv["cut_index"] == c.cut_index] for c in picks.itertuples()},
                         ["penalty"], _titled("Stitcher convergence (first seed pair)", caption), hue="pair",
                         x="value", xlabel="stitcher steps (log scale)", figure="ablation_convergence",
                         note="no interval: one seed pair")
        steps = sorted(conv["value"].unique())
        for ax in fig.axes:  # steps grow by factors: a log axis, ticked at the steps run
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(steps, [f"{n:,.0f}" for n in steps], rotation=45, ha="right", rotation_mode="anchor")
        figures["ablation_convergence"] = fig
    return figures


def _one_cka_line(cifar: pd.DataFrame) -> pd.DataFrame:
    """CKA is symmetric: SSS into E2E and E2E into SSS compare the same two networks, so their CKA
    is one line, under its own label; each direction keeps its penalties."""
    cifar = cifar.copy()
    sss_into_e2e = (cifar["top_role"] == "e2e") & (cifar["bottom_role"] == "sss")
    e2e_into_sss = (cifar["top_role"] == "sss") & (cifar["bottom_role"] == "e2e")
    both = cifar[sss_into_e2e].copy()
    both["pair"] = "SSS and E2E (CKA: either direction)"
    both[[c for c in both if c.startswith("penalty")]] = math.nan
    cifar.loc[sss_into_e2e | e2e_into_sss, [c for c in cifar if c.startswith("cka")]] = math.nan
    return pd.concat([cifar, both], ignore_index=True)


def ssl_figures(data: FigureData, t: pd.DataFrame, caption: str) -> dict:
    """Fig. 6: SSS into E2E, E2E into SSS and two supervised seeds, penalty and CKA; Fig. 2B
    when the ImageNet panel ran."""
    figure = "fig6_ssl_vs_e2e (and fig2b_imagenet)"
    _require(t, ["panel_id", "pair", "top_role", "bottom_role", "cut_index", "cut", "penalty", "penalty_init", "cka"],
             figure)
    t = t.assign(top=t["top_role"].map({"e2e": "E2E", "sss": "SSS"}).fillna(t["top_role"]))  # each direction's top
    panels = {name: f for name, f in t.groupby("panel_id", sort=False)}
    if "cifar10" not in panels:
        raise ValueError(f"{figure}: the summary lacks the panel (panel_id) 'cifar10'")
    figures = {"fig6_ssl_vs_e2e": facet_grid(
        {"CIFAR-10, ResNet-18": _one_cka_line(panels["cifar10"])}, ["penalty", "penalty_init", "cka"],
        _titled("Self-supervised vs supervised (Fig. 6)", caption), hue="pair", top_name="top",
        references=(_paper("ssl_cifar", "paper: up to"), _paper_range("cka_ssl_range", "paper, CKA of SSS vs E2E:")),
        figure="fig6_ssl_vs_e2e")}
    if "imagenet" in panels:
        confidence = data.params.get("confidence", 0.95)
        figures["fig2b_imagenet"] = facet_grid(
            {"ImageNet, ResNet-50": panels["imagenet"]}, ["penalty", "cka"],
            "Self-supervised into supervised on ImageNet (Fig. 2B)"
            + (", and an untrained ResNet-50 control" if (panels["imagenet"]["bottom_role"] == "random").any() else "")
            + f": one network each, bands: {confidence:.0%} intervals over the test images", hue="pair",
            references=(_paper("ssl_imagenet", "paper: up to"),), figure="fig2b_imagenet")
    return figures
