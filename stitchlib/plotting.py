"""Figures: seaborn on tidy rows, saved as PNG and PDF with fixed metadata so that the same
results give the same bytes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .paper import paper_value

__all__ = ["plot", "save_figure"]

_FIXED_METADATA = {
    ".png": {"Software": None},
    ".pdf": {"Creator": None, "Producer": None, "CreationDate": None},
}


def save_figure(fig, folder: Path, name: str) -> list[Path]:
    """Write `name`.png and `name`.pdf into `folder`, each atomically (temp file + rename)."""
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
    return paths


def data_caption(setup) -> str:
    """Name the data honestly: the lossy JPEG copy is not the paper's CIFAR-10."""
    ident = setup.dataset.identity
    name = {"cifar10": "CIFAR-10", "fashion_mnist": "Fashion-MNIST"}.get(ident["name"], ident["name"])
    if "jpeg" in ident["source"].lower():
        name += " (JPEG copy)"
    if "vit" in setup.params.get("architectures", {}):
        name += "; the ViT is trained on it, not on CIFAR-5m as in the paper"
    return f"{name} [{setup.profile}]"


def _cut_axis(ax, table: pd.DataFrame) -> None:
    cuts = table[["cut_index", "cut"]].drop_duplicates().sort_values("cut_index")
    ax.set_xticks(cuts["cut_index"])
    ax.set_xticklabels(cuts["cut"], rotation=45, ha="right")
    ax.set_xlabel("cut point (bottom ends after)")


_ROWS = {"penalty": ("after training", "stitching penalty (points)"),
         "penalty_init": ("at least-squares init", "stitching penalty (points)"),
         "cka": ("", "linear CKA(top, bottom)")}
_DASHES = ["-", "--", ":", "-."]


def _grid(panels: dict[str, pd.DataFrame], columns: list[str], title: str, *, hue: str, style: str | None = None,
          reference: tuple[float, str] | None = None, relative: tuple | None = None,
          rows: dict | None = None) -> plt.Figure:
    """One row per value column (penalty after training, at init, or CKA), one panel per entry
    of `panels` (summary rows: the mean over seed pairs per cut with `<value>_low/_high`), a line
    per `hue` (and `style`) level with its interval as a band. `reference` = (value, label): the
    paper's number, drawn dashed on the penalty rows. `relative` = (level, offsets, label, cuts):
    the paper's bound on a difference from the `hue` level `level`, drawn dashed as that level's
    curve shifted by each offset, over the cut indices `cuts` (None: all) that the claim averages."""
    rows = {**_ROWS, **(rows or {})}
    fig, axes = plt.subplots(len(columns), len(panels), figsize=(3.6 * len(panels), 3.6 * len(columns)),
                             squeeze=False, sharey="row")
    palette = sns.color_palette()
    for r, column in enumerate(columns):
        what, ylabel = rows[column]
        for c, (name, frame) in enumerate(panels.items()):
            ax = axes[r][c]
            frame = frame[frame[column].notna()]
            levels = list(dict.fromkeys(frame[hue]))
            styles = list(dict.fromkeys(frame[style])) if style else [None]
            for h, level in enumerate(levels):
                for k, st in enumerate(styles):
                    f = frame[(frame[hue] == level) & ((frame[style] == st) if style else True)]
                    if f.empty:
                        continue
                    f = f.sort_values("cut_index")
                    color = palette[h % len(palette)]
                    label = f"{level}" + (f", {st}" if style else "")
                    ax.plot(f["cut_index"], f[column], marker="o", ms=3, color=color, ls=_DASHES[k % 4], label=label)
                    if f"{column}_low" in f and f[f"{column}_low"].notna().any():
                        ax.fill_between(f["cut_index"], f[f"{column}_low"], f[f"{column}_high"], color=color,
                                        alpha=0.15, lw=0)
            ax.set_title(f"{name}: {what}" if what else name, fontsize=8)
            ax.set_ylabel(ylabel)
            _cut_axis(ax, frame)
            if column == "cka":
                ax.set_ylim(0, 1.05)
            else:
                ax.axhline(0, color="0.6", lw=0.8)
                if reference is not None:
                    ax.axhline(reference[0], color="0.3", lw=0.8, ls="--", label=reference[1])
                if relative is not None and column == "penalty":  # the claims are about the trained stitcher
                    level, offsets, label, cuts = relative
                    base = frame[frame[hue] == level].sort_values("cut_index")
                    if cuts is not None:
                        base = base[base["cut_index"].isin(cuts)]
                    for n, offset in enumerate(offsets):
                        ax.plot(base["cut_index"], base[column] + offset, color="0.3", lw=0.8, ls="--",
                                label=label if n == 0 else None)
            if levels:
                ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _titled(title: str, caption: str) -> str:
    return title + (f": {caption}" if caption else "")


def plot(results, folder: Path | None = None, *, caption: str | None = None) -> dict:
    """The experiment's figures, saved as PNG and PDF into `folder` (default: the run's figures
    folder): Figs. 2A and 5 for connectivity, 6 (and 2B with ImageNet) for ssl_vs_e2e, 3A for
    label_noise, 2C, 3B, 3C, 7 and 9 for more_is_better, 4, 8 and the BatchNorm and
    initialisation ablations for ablations. Lines are means over the seed pairs, bands their
    intervals (`stitchlib.claims.summary_table`), dashed lines the paper's numbers. Returns the
    figures by name and the paths written."""
    from .claims import summary_table  # claims reads experiments, which plotting need not load first
    from .experiments import EXPERIMENTS

    folder = results.setup.figures if folder is None else folder
    caption = data_caption(results.setup) if caption is None else caption
    confidence = results.setup.params.get("confidence", 0.95)
    caption += f"; mean over seed pairs, bands: {confidence:.0%} intervals"
    sns.set_theme(context="paper", style="ticks")
    summary = summary_table(results)
    figures = EXPERIMENTS[results.setup.experiment].figures(results, summary, caption)
    paths = [path for name, fig in figures.items() for path in save_figure(fig, folder, name)]
    return {**figures, "paths": paths}


def _paper(key: str, what: str = "paper") -> tuple[float, str]:
    return paper_value(key), f"{what} {paper_value(key):g} points"


def connectivity_figures(results, t: pd.DataFrame, caption: str) -> dict:
    """Fig. 2A (stitching penalty per cut, another seed vs a random network, one panel per model;
    after training the stitcher and at its least-squares initialisation) and Fig. 5 (CKA)."""
    t = t.copy()
    t["width"] = t["width"].map(lambda w: f"{w:g}x")
    t["bottom"] = t["bottom"].map({"trained": "another seed", "random": "random network"})
    panels = {family: f for family, f in t.groupby("family", sort=False)}
    line = dict(hue="width", style="bottom")
    figures = {"fig2a_connectivity": _grid(panels, ["penalty", "penalty_init"],
                                           _titled("Stitching connectivity (Fig. 2A)", caption),
                                           reference=_paper("close", "paper: up to"), **line),
               "fig5_cka": _grid(panels, ["cka"], _titled("CKA at the same cuts (Fig. 5)", caption), **line)}
    if getattr(results, "cka_matrix", None) is not None:  # results made elsewhere may lack it
        figures["cka_layers"] = cka_heatmap(results.cka_matrix, caption)
    return figures


def cka_heatmap(matrix: pd.DataFrame, caption: str):
    """CKA between every cut of one seed (rows) and every cut of the other (columns): the
    layer-by-layer heatmap (Kornblith et al. 2019). Its diagonal is Fig. 5's line for that pair."""
    first = matrix.iloc[0]
    grid = matrix.pivot(index=["cut_index_a", "cut_a"], columns=["cut_index_b", "cut_b"], values="cka")
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    sns.heatmap(grid.to_numpy(), vmin=0, vmax=1, cmap="viridis", square=True, ax=ax,
                xticklabels=[name for _, name in grid.columns], yticklabels=[name for _, name in grid.index],
                cbar_kws={"label": "linear CKA"})
    ax.set_xlabel(f"cut of seed {first['seed_b']}")
    ax.set_ylabel(f"cut of seed {first['seed_a']}")
    # One seed pair, no interval: the data part of the caption only.
    data = caption.split("; mean over")[0]
    ax.set_title(f"CKA at every pair of cuts: {first['family']} {first['width']:g}x, seeds {first['seed_a']} and "
                 f"{first['seed_b']}\n{data}", fontsize=8)
    fig.tight_layout()
    return fig


def label_noise_figures(results, t: pd.DataFrame, caption: str) -> dict:
    """Fig. 3A: each weak bottom into the clean top, penalty after training and at init, and CKA."""
    # The claim: over the first half of the cuts, a weak bottom's penalty is within 3 points of the
    # clean seed's (the paper's 'close'); drawn as the clean curve + 3 there.
    bound = paper_value("label_early")
    first_half = sorted(t["cut_index"].unique())[: t["cut_index"].nunique() // 2]
    fig = _grid({"bottoms into a clean-label top": t}, ["penalty", "penalty_init", "cka"],
                _titled("Changing the label distribution (Fig. 3A)", caption), hue="pair",
                relative=(t[t["bottom_role"] == "clean"]["pair"].iloc[0], [bound], f"paper: clean + {bound:g} points (claim: mean over these cuts)",
                          first_half))
    return {"fig3a_label_noise": fig}


def more_is_better_figures(results, t: pd.DataFrame, caption: str) -> dict:
    """Figs. 2C (samples), 3B (training time), 3C (width, both directions), 7 (CKA for the
    three) and 9 (freeze training)."""
    def panel(*ids):
        return t[t["panel_id"].isin(ids)]

    # The two stitched width directions, each titled with its display name.
    widths = {f["panel"].iloc[0]: f for _, f in panel("width_bottoms", "width_tops").groupby("panel_id", sort=False)}
    rows = ["penalty", "penalty_init"]
    figures = {
        "fig2c_samples": _grid({"samples": panel("samples")}, rows,
                               _titled("More samples (Fig. 2C)", caption), hue="pair"),
        "fig3b_training_time": _grid({"training time": panel("training_time")}, rows,
                                     _titled("More training time (Fig. 3B)", caption), hue="pair"),
        "fig3c_width": _grid(widths, rows, _titled("More width (Fig. 3C)", caption), hue="pair"),
    }
    cka = {"samples": panel("samples"), "training time": panel("training_time"),
           "width": panel("width_bottoms", "width_tops", "width_cka")}
    figures["fig7_more_cka"] = _grid(cka, ["cka"], _titled("More is similar with CKA? (Fig. 7)", caption),
                                     hue="pair")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    sns.lineplot(data=results.curves, x="step", y="test_error", hue="run", marker="o", ax=ax,
                 errorbar=("ci", 95), seed=0)
    ax.set_xlabel("SGD steps on all training images")
    ax.set_ylabel("test error (%)")
    ax.legend(fontsize=6)
    ax.set_title(_titled("Freeze training (Fig. 9)", caption), fontsize=8)
    fig.tight_layout()
    figures["fig9_freeze"] = fig
    return figures


def ablation_figures(results, t: pd.DataFrame, caption: str) -> dict:
    """Fig. 4 (kernel size), Fig. 8 (fine-tuning vs stitching a random bottom), and the two
    ablations the paper could not run: BatchNorm policy and the stitcher's initialisation."""
    panels = {name: f for name, f in t.groupby("panel_id", sort=False)}
    kernel = panels["kernel_size"]
    # The kernel claim averages the cuts every k stitches (feature maps, not the pooled vector).
    maps = sorted(kernel[(kernel["value"] != 1) & kernel["penalty"].notna()]["cut_index"].unique())
    family = results.setup.params["finetune_arch"]
    depth = family.get("depth", 164)
    return {
        # The claim: each k's penalty within 3 points of k = 1's (drawn as k = 1's curve +- 3).
        "fig4_kernel_size": _grid({"kernel size": kernel}, ["penalty"],
                                  _titled("Stitcher kernel size (Fig. 4)", caption), hue="pair",
                                  relative=None if not (kernel["value"] == 1).any() else (
                                            kernel[kernel["value"] == 1]["pair"].iloc[0],
                                            [-paper_value("kernel"), paper_value("kernel")],
                                            f"paper: k = 1 +- {paper_value('kernel'):g} points (claim: mean over "
                                            "these cuts)", maps or None)),
        "fig8_finetuning": _grid({f"ResNet-{depth}: random bottom, trained top": panels["finetune"]},
                                 ["penalty"], _titled("Fine-tuning vs stitching (Fig. 8)", caption), hue="pair",
                                 rows={"penalty": ("", "test error minus the trained top's (points)")}),
        "ablation_bn_init": _grid({"BatchNorm policy": panels["bn_policy"], "initialisation": panels["init"]}, ["penalty", "penalty_init"],
                                  _titled("BatchNorm policy and initialisation", caption), hue="pair",
                                  rows={"penalty_init": ("at initialisation", "stitching penalty (points)")}),
    }


def ssl_figures(results, t: pd.DataFrame, caption: str) -> dict:
    """Fig. 6: SSS into E2E, E2E into SSS and two supervised seeds, penalty and CKA; Fig. 2B
    when the ImageNet panel ran."""
    panels = {name: f for name, f in t.groupby("panel_id", sort=False)}
    figures = {"fig6_ssl_vs_e2e": _grid({"CIFAR-10, ResNet-18": panels["cifar10"]}, ["penalty", "penalty_init", "cka"],
                                        _titled("Self-supervised vs supervised (Fig. 6)", caption), hue="pair",
                                        reference=_paper("ssl_cifar", "paper: up to"))}
    if "imagenet" in panels:
        figures["fig2b_imagenet"] = _grid({"ImageNet, ResNet-50": panels["imagenet"]}, ["penalty", "cka"],
                                          "Self-supervised into supervised on ImageNet (Fig. 2B)", hue="pair",
                                          reference=_paper("ssl_imagenet", "paper: up to"))
    return figures
