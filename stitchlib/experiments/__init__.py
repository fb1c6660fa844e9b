"""The notebooks' experiments, one module each, found through one registry (`EXPERIMENTS`).

Each experiment declares its parameters once (a frozen dataclass, `params`), builds a plan of
typed task specs from them (`tasks`: models to train, stitches, CKA comparisons, each with its
store key, dependencies and estimated cost) and runs it (`compute`), producing tidy tables.
`plan(...)` checks parameters and plans without loading or training anything; `setup(...)` does
the same and then loads the data for a run.
"""

# In the notebooks' order: the registry lists them so.
from . import connectivity, ssl_vs_e2e, label_noise, more_is_better, ablations  # noqa: I001
from .core import EXPERIMENTS, Experiment, Plan, Results, Setup, experiment_named, make_plan, plan_report, setup
from .params import PROFILES, Params

plan = make_plan

__all__ = ["EXPERIMENTS", "Experiment", "Plan", "PROFILES", "Params", "Results", "Setup", "setup", "plan",
           "experiment_named", "connectivity", "ssl_vs_e2e", "label_noise", "more_is_better", "ablations"]
