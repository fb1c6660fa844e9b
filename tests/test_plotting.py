from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402

import stitchlib  # noqa: E402


def _results(folder):
    rows = [dict(family="ResNet-18", width=w, bottom=b, pair=b, cut_index=i, cut=f"c{i}", penalty=i * (3 if b == "random" else 0.5),
                 penalty_init=i, cka=1 - i / 20)
            for w in (0.5, 1.0) for b in ("trained", "random") for i in range(4)]
    rows += [dict(family="ViT", width=0.08, bottom="trained", pair="seed 1", cut_index=i, cut=f"blocks.{i}",
                  penalty=1.0, penalty_init=2.0, cka=0.9) for i in range(3)]
    setup = SimpleNamespace(experiment="connectivity", figures=folder, profile="smoke", params={"arch": "resnet18", "architectures": {"vit": {}}},
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
    assert "CIFAR-10 (JPEG copy)" in title and "not on CIFAR-5m" in title
    assert len(out["fig2a_connectivity"].axes) == 4 and len(out["fig5_cka"].axes) == 2  # (2 rows x) 2 models
