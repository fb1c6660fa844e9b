"""Figures: seaborn on tidy rows, saved as PNG and PDF with fixed metadata so that the same
results give the same bytes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

__all__ = ["plot_connectivity", "save_figure"]

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


def plot_connectivity(results, folder: Path | None = None, *, caption: str | None = None) -> dict:
    """Fig. 2A (stitching penalty per cut, another seed vs a random network, one panel per model;
    after training the stitcher and at its least-squares initialisation) and Fig. 5 (CKA at the
    same cuts), saved into `folder` (default: the run's figures folder). Returns the figures
    and the paths written."""
    folder = results.setup.figures if folder is None else folder
    if caption is None:
        caption = data_caption(results.setup)
    sns.set_theme(context="paper", style="ticks")
    t = results.table.copy()
    t["width"] = t["width"].map(lambda w: f"{w:g}x")
    t["bottom"] = t["bottom"].map({"trained": "another seed", "random": "random network"})
    families = list(dict.fromkeys(t["family"]))
    kw = dict(x="cut_index", hue="width", style="bottom", style_order=["another seed", "random network"],
              markers=True, errorbar=("ci", 95), seed=0)

    def panels(columns, titles, ylabel):
        fig, axes = plt.subplots(len(columns), len(families), figsize=(3.4 * len(families), 3.6 * len(columns)),
                                 squeeze=False, sharey="row")
        for r, (column, title) in enumerate(zip(columns, titles)):
            for c, family in enumerate(families):
                ax, f = axes[r][c], t[t["family"] == family]
                sns.lineplot(data=f, y=column, ax=ax, **kw)
                ax.set_title(f"{family}: {title}" if title else family, fontsize=8)
                ax.set_ylabel(ylabel)
                _cut_axis(ax, f)
                if ax.get_legend() is not None and (r, c) != (0, 0):
                    ax.get_legend().remove()
                if column.startswith("penalty"):
                    ax.axhline(0, color="0.6", lw=0.8)
        return fig, axes

    fig_a, _ = panels(["penalty", "penalty_init"], ["after training", "at least-squares init"],
                      "stitching penalty (points)")
    fig_a.suptitle("Stitching connectivity (Fig. 2A)" + (f": {caption}" if caption else ""), fontsize=9)
    fig_a.tight_layout()
    fig_c, axes = panels(["cka"], [""], "linear CKA(top, bottom)")
    for ax in axes[0]:
        ax.set_ylim(0, 1.05)
    fig_c.suptitle("CKA at the same cuts (Fig. 5)" + (f": {caption}" if caption else ""), fontsize=9)
    fig_c.tight_layout()

    paths = save_figure(fig_a, folder, "fig2a_connectivity") + save_figure(fig_c, folder, "fig5_cka")
    return {"fig2a": fig_a, "fig5": fig_c, "paths": paths}
