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
    return f"{name}, {setup.params.get('arch', '')} [{setup.profile}]"


def _cut_axis(ax, table: pd.DataFrame) -> None:
    cuts = table[["cut_index", "cut"]].drop_duplicates().sort_values("cut_index")
    ax.set_xticks(cuts["cut_index"])
    ax.set_xticklabels(cuts["cut"], rotation=45, ha="right")
    ax.set_xlabel("cut point (bottom ends after)")


def plot_connectivity(results, folder: Path | None = None, *, caption: str | None = None) -> dict:
    """Fig. 2A (stitching penalty per cut, trained vs random bottom, per width; at
    initialisation and after training) and Fig. 5 (CKA per cut), saved into `folder`
    (default: the run's figures folder). Returns the figures and the paths written."""
    folder = results.setup.figures if folder is None else folder
    if caption is None:
        caption = data_caption(results.setup)
    sns.set_theme(context="paper", style="ticks")
    t = results.table.copy()
    t["width"] = t["width"].map(lambda w: f"{w:g}x")
    t["bottom"] = t["bottom"].map({"trained": "another seed", "random": "random network"})
    kw = dict(x="cut_index", hue="width", style="bottom", markers=True, errorbar=("ci", 95), seed=0)

    fig_a, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, column, title in zip(axes, ["penalty", "penalty_init"],
                                 ["after training the stitcher", "at least-squares init (direct matching)"]):
        sns.lineplot(data=t, y=column, ax=ax, **kw)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(title)
        ax.set_ylabel("stitching penalty (test error points)")
        _cut_axis(ax, t)
    axes[1].get_legend().remove()
    fig_a.suptitle("Stitching connectivity (Fig. 2A)" + (f": {caption}" if caption else ""), fontsize=9)
    fig_a.tight_layout()

    fig_c, ax = plt.subplots(figsize=(6.5, 3.8))
    sns.lineplot(data=t, y="cka", ax=ax, **kw)
    ax.set_ylim(0, 1.05)
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.set_ylabel("linear CKA(top model, bottom model)")
    ax.set_title("CKA at the same cuts (Fig. 5)" + (f": {caption}" if caption else ""), fontsize=9)
    _cut_axis(ax, t)
    fig_c.tight_layout()

    paths = save_figure(fig_a, folder, "fig2a_connectivity") + save_figure(fig_c, folder, "fig5_cka")
    return {"fig2a": fig_a, "fig5": fig_c, "paths": paths}
