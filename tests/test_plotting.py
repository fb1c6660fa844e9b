from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402

import stitchlib  # noqa: E402


def _results(folder):
    rows = [dict(family="ResNet-18", width=w, bottom=b, pair=b, pair_index=i, seed_top=2 * i, seed_bottom=2 * i + 1,
                 cut_index=c, cut=f"c{c}", penalty=c * (3 if b == "random" else 0.5) + i, penalty_init=c + i,
                 cka=1 - c / 20 - i / 50)
            for w in (0.5, 1.0) for b in ("trained", "random") for i in range(2) for c in range(4)]
    rows += [dict(family="ViT", width=0.08, bottom="trained", pair="seed 1", pair_index=i, seed_top=2 * i,
                  seed_bottom=2 * i + 1, cut_index=c, cut=f"blocks.{c}", penalty=1.0 + i, penalty_init=2.0, cka=0.9)
             for i in range(2) for c in range(3)]
    setup = SimpleNamespace(experiment="connectivity", figures=folder, profile="smoke",
                            params={"arch": "resnet18", "architectures": {"vit": {}}, "confidence": 0.95},
                            dataset=SimpleNamespace(identity={"name": "cifar10", "source": "archive:/x/c.jpeg.tar.gz"}))
    return SimpleNamespace(table=pd.DataFrame(rows), setup=setup)


def test_figures_are_written_and_byte_identical_on_rerun(tmp_path):
    out = stitchlib.plot(_results(tmp_path))
    names = sorted(p.name for p in out["paths"])
    assert names == ["fig2a_connectivity.pdf", "fig2a_connectivity.png", "fig5_cka.pdf", "fig5_cka.png"]
    first = {p.name: p.read_bytes() for p in out["paths"]}
    again = stitchlib.plot(_results(tmp_path))
    assert {p.name: p.read_bytes() for p in again["paths"]} == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left
    title = out["fig2a_connectivity"]._suptitle.get_text()
    assert "CIFAR-10 (JPEG copy)" in title and "not on CIFAR-5m" in title and "95% intervals" in title
    assert len(out["fig2a_connectivity"].axes) == 4 and len(out["fig5_cka"].axes) == 2  # (2 rows x) 2 models
    ax = out["fig2a_connectivity"].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    # One line per width and bottom, each with its interval band, and the paper's bound dashed.
    assert labels == ["0.5x, another seed", "0.5x, random network", "1x, another seed", "1x, random network",
                      "paper: up to 3 points"]
    assert len(ax.collections) == 4  # the four bands
    # The band of the trained 0.5x line spans the two pairs' means (t interval: far wider than their range).
    trained = ax.lines[0]
    assert list(trained.get_ydata()) == [0.5, 1.0, 1.5, 2.0]


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
    setup = SimpleNamespace(experiment="label_noise", figures=tmp_path, profile="smoke", params={"confidence": 0.95},
                            dataset=SimpleNamespace(identity={"name": "cifar10", "source": "torchvision"}))
    out = stitchlib.plot(SimpleNamespace(table=pd.DataFrame(rows), setup=setup))
    ax = out["fig3a_label_noise"].axes[0]
    bound = next(line for line in ax.lines if line.get_label().startswith("paper: clean + 3"))
    # The clean curve (mean over the two pairs: c + 0.5) + 3, over the first three of six cuts.
    assert list(bound.get_xdata()) == [0, 1, 2] and list(bound.get_ydata()) == [3.5, 4.5, 5.5]
    # Only on the trained stitcher's row: no claim bounds the penalty at initialisation.
    init = out["fig3a_label_noise"].axes[1]
    assert not [line for line in init.lines if line.get_label().startswith("paper")]
