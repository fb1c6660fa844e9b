"""stitchlib: model stitching and CKA, after Bansal, Nakkiran & Barak (NeurIPS 2021).

The public face: data (`load_dataset`), models (`build_model`, `cut_points`, `split`, `define_spine`, `trace_spine`),
training (`train_model`), stitching (`stitch`), similarity (`linear_cka`, `CKAAccumulator`, `cka_matrix`, `CKAMatrix`),
the artifact `Store`, and the notebooks' experiments (`plan`, `setup`, `connectivity`, `ssl_vs_e2e`, `label_noise`,
`more_is_better`, `ablations`, `check_claims`, `summarize`, `report`, `plot`).
"""

__version__ = "0.1.0"

from .data import load_dataset
from .claims import check_claims, summarize
from . import experiments as _experiments
from .experiments import plan, setup
from .explore import explore
from .models import build_model, cut_points, define_spine, split, trace_spine
from .plotting import plot
from .report import report
from .similarity import CKAAccumulator, CKAMatrix, cka_matrix, linear_cka
from .stitching import stitch
from .store import Store
from .training import train_model

# Each notebook's compute call: run the experiment's plan (stitchlib.experiments.<name>.run).
connectivity = _experiments.connectivity.run
ssl_vs_e2e = _experiments.ssl_vs_e2e.run
label_noise = _experiments.label_noise.run
more_is_better = _experiments.more_is_better.run
ablations = _experiments.ablations.run

__all__ = [
    "load_dataset", "build_model", "cut_points", "split", "define_spine", "trace_spine", "train_model", "stitch", "linear_cka",
    "CKAAccumulator", "cka_matrix", "CKAMatrix", "Store", "plan", "setup", "connectivity", "ssl_vs_e2e", "label_noise", "more_is_better", "ablations", "check_claims",
    "summarize",
    "plot", "report", "explore",
]
