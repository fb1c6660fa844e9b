"""Writes the notebooks' source cells and their profile YAML files (outputs come from
`make refresh-notebooks`).

Kept as a script so the notebooks' structure is reviewable as code; run it only when the cells
change, then refresh the outputs. Every parameter is declared once, in its experiment's parameter
class (`stitchlib.experiments.<experiment>`: type, help, value per profile); the parameters cell
and the YAML files are generated from it. No measured number is written here: results are
rendered from the run's tables by `stitchlib.report` when a notebook runs.
"""
from pathlib import Path

import nbformat as nbf

from stitchlib.experiments import EXPERIMENTS, PROFILES
from stitchlib.experiments import make_plan
from stitchlib.experiments.core import fast_path_speedup
from stitchlib.experiments.params import markdown_table, parameters_cell, profile_yaml
from stitchlib.paper import REFERENCE

HERE = Path(__file__).resolve().parent.parent / "notebooks"

def code(src, tags=()):
    cell = nbf.v4.new_code_cell(src.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def md(src):
    return nbf.v4.new_markdown_cell(src.strip("\n"))


def parameter_names(experiment):
    return EXPERIMENTS[experiment].Params.names()


def claims_cell(keys, statistics):
    """The claims and where their thresholds come from: the paper's own words, at every profile."""
    quotes = "\n".join(f"- *{REFERENCE[k][2]}*: \"{REFERENCE[k][3]}\"" for k in keys)
    return f"""
**Claims, statistics and thresholds, fixed before any result was seen.** Every comparison runs over
independent seed pairs (`seeds`). A statistic is computed per pair and reported as the mean over
the pairs with an interval that combines the spread between pairs (Student's t) and test-set
sampling (a paired bootstrap over the test images): see `stitchlib.statistics`. A verdict is
decided on the whole interval: **holds** when all of it lies on the claim's side of the threshold,
**fails** when all of it lies on the other side, **inconclusive** otherwise. A claim about every
cut holds when every cut holds, and fails when any cut fails. Two seed pairs decide nothing:
the interval's width then rests on one degree of freedom, and two machines would reach different
verdicts on the same claim (`bench/verdict_agreement.py`), so every verdict from two pairs is
**inconclusive** by construction, with its mean and interval still shown.

The thresholds are the paper's numbers (`stitchlib.paper`) at every profile, none widened for
the small `smoke` models: there, a claim that needs full-size models fails or is inconclusive,
and that is the result.

{statistics}

The paper's words:
{quotes}
"""


def notebook(name, experiment, header, keys, statistics, extra=()):
    """The thin layout every notebook shares: claim, parameters, claims and thresholds, one setup
    call, one cached compute call, the checked verdicts, the results rendered from the tables, the
    numbers behind them, the figures, and last the explorer over the tables (`stitchlib.explore`)."""
    library = parameter_names(experiment)

    def call(head, args, indent):
        lines, line = [], head
        for arg in args:
            piece = f"{arg}={arg}, "
            if len(line) + len(piece) > 110:
                lines.append(line.rstrip())
                line = " " * indent
            line += piece
        lines.append(line.rstrip().rstrip(","))
        return "\n".join(lines)

    setup = call(f'run = stitchlib.setup(\n    "{experiment}", profile=profile, device=device, executor=executor, '
                 'ray_address=ray_address, gpu_fraction=gpu_fraction, ', library, 4) + ",\n)"
    cells = [
        md(header + RUN_NOTE),
        code(parameters_cell(EXPERIMENTS[experiment].Params), tags=["parameters"]),
        md(claims_cell(keys, statistics)),
        code("import stitchlib\n\n" + setup + "\nrun.describe()"),
        code(f"results = stitchlib.{experiment}(run)  # cached: a second run with the same parameters only loads"),
        code("# NBVAL_CHECK_OUTPUT\nclaims = stitchlib.check_claims(results)\n"
             'print(claims[["claim", "model", "threshold", "verdict"]].to_string(index=False))'),
        code("stitchlib.report(results, claims)  # the results, rendered from this run's tables"),
        code("stitchlib.summarize(results, claims)"),
        code("figures = stitchlib.plot(results)"),
        *(code(src) for src in extra),
        md(EXPLORE_NOTE.format(name=name)),
        # Run everywhere (nbval too: a broken explorer fails the notebook) but never compared: a
        # widget's output is a view of the kernel's state, not a result.
        code("stitchlib.explore(results)", tags=["nbval-ignore-output"]),
    ]
    nb = nbf.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbf.write(nb, HERE / f"{name}.ipynb")
    for profile in PROFILES:
        (HERE / "params" / f"{name}.{profile}.yaml").write_text(profile_yaml(EXPERIMENTS[experiment].Params, name,
                                                                             profile))


RUN_NOTE = """

Two profiles: `smoke` (the default) runs on a 2-core CPU in minutes, `paper` is Appendix A's scale
on GPUs; the parameters cell below lists both values of every parameter. They differ in sizes and
in three settings that a size forces: the stitcher's learning rate (15 smoke steps need a larger
one), the CKA estimator (minibatch at 10,000 images) and freeze training's "near zero".
`python -m stitchlib plan <notebook> --profile paper` prints what a run computes and costs. Measured runtimes are in the
README (rendered from `results/`). Data here is the lossy **CIFAR-10 JPEG copy** when that is what
is available: its numbers are self-consistent but are not the paper's.
"""

EXPLORE_NOTE = """
**Explore the tables.** `stitchlib.explore(results)` draws any panel of this run's summary (per cut,
the mean over the seed pairs, its interval as a band) for the pairs you pick: the penalty after
training, at initialisation, or CKA, redrawn on every change, with the rows behind the figure
below it. It needs a live kernel with ipywidgets (JupyterLab or Jupyter Notebook): a saved notebook
shows no widget. It reads tables only, so it works as well on a results CSV from any machine, e.g.
`stitchlib.explore("../results/smoke/{name}_summary.csv")` from `notebooks/`.
"""

CONNECTIVITY_HEADER = """
# 01 · Stitching connectivity (Fig. 2A) and CKA against a random network (Fig. 5)

**Claim (Section 4 of Bansal, Nakkiran & Barak, 2021).** Two networks trained identically from
different random seeds are *stitching-connected*: the bottom of one, joined to the top of the other
through a single BatchNorm → 1×1 conv → BatchNorm layer (token-wise linear for the ViT), loses little
test accuracy at **every** cut point. This holds for ResNet-18 at several widths, the deep
pre-activation ResNet (ResNet-164 at the paper's scale), the Myrtle CNN and a Vision Transformer, and
for two ResNet-18s trained on disjoint halves of the training set. A freshly built random network is
the control (Appendix B.2.1): its bottom stitches cheaply only at the earliest cuts. CKA (Fig. 5) is
computed for the same pairs at the same cuts.

In each panel and seed pair the top seed is the top model A; the bottom seed and a random network
are stitched into it at every cut point. The penalty is the stitched model's test error minus A's,
in points, shown at the least-squares initialisation (direct matching) and after training the
stitcher. The paper trained its ViT on CIFAR-5m, which is not available here: ours is trained on
CIFAR-10. The two disjoint-halves models get as many SGD steps as the others (the paper's recipe
counts steps), so twice the epochs; each seed pair draws its own halves. The Myrtle CNN is built
as the paper's text reads ("four Conv-BatchNorm-ReLU-MaxPool layers": every layer pools); Page's
own network does not pool after its first layer, which `architectures: {myrtle: {pool_first:
false}}` builds instead.

Beside Fig. 5, the first ResNet-18 seed pair (at width 1 where the run has it) gets CKA between
**every pair of cuts** (`cka_layers`, the layer-by-layer heatmap of Kornblith et al. 2019; its
diagonal is Fig. 5's line for that pair). It is a picture, not a claim.
"""

CONNECTIVITY_STATISTICS = """
- (a) for every panel and width: the mean penalty over the seed pairs **at every cut** is at most
  3 points (the paper's "close (up to 3% error)").
- (b) ResNet-18: a random bottom is not stitching-connected: its mean penalty over the later half of
  the cuts exceeds 3 points.
- (c) ResNet-18: a random bottom is cheap at the first cut: its penalty there is at most 3 points.
  (b) and (c) are checked for ResNet-18, where the paper shows the random control; the other panels
  draw theirs without a verdict.
"""

SSL_HEADER = """
# 02 · Self-supervised vs supervised (Fig. 6 on CIFAR-10, Fig. 2B on ImageNet)

**Claim (Section 5 of Bansal, Nakkiran & Barak, 2021: "all roads lead to Rome").** A network trained
without labels, by self-supervision, learns a representation that stitches to an end-to-end
supervised one in both directions at every cut, with penalties of the same order as two
supervised seeds, although CKA calls them less similar than the two seeds (Appendix B.2.2). On
ImageNet, SimCLR, SwAV and DINO ResNet-50s stitch into the supervised torchvision ResNet-50 (Fig. 2B).

**CIFAR-10.** The self-supervised ("SSS") ResNet-18 is ours: SimCLR (two views with random resized
crop, flip, colour jitter and grayscale; a 2-layer projection head; the NT-Xent loss at temperature
0.5), then a linear classifier on its frozen features, so no layer but the last sees a label. For
each seed pair, the E2E model and the supervised seed pair are `01`'s ResNet-18s at `width`, from
the artifact store; the SSS model has a seed of its own.

**ImageNet.** Runs when you give `imagenet_dir` (the validation set as `<dir>/<class>/<image>`) and
the weights are in `data/weights/` (or `$STITCHLIB_WEIGHTS`; online they download by themselves):
torchvision's supervised ResNet-50, VISSL's SimCLR and SwAV, DINO's ResNet-50, and beside them an
untrained ResNet-50 from `imagenet_random_seed`, Fig. 2B's random control. Otherwise the notebook
says what is missing and where it goes, and shows the CIFAR-10 part. On a CPU keep
`imagenet_samples` small: every cut runs ResNet-50 at 224 × 224.
"""

SSL_STATISTICS = """
- (a) the paper's statistic, for each direction (SSS into E2E, E2E into SSS): the mean penalty over
  the seed pairs at every cut is at most 3 points.
- (a') adapted, because a short SimCLR run leaves the SSS model weaker than E2E (no stitch can beat
  the weaker of its two networks): the mean over the cuts of the error beyond the weaker network,
  minus the same for two supervised seeds, is at most 3 points. Reported beside (a), not instead.
- (b) the seed pair's mean CKA over the cuts exceeds SSS-E2E's.
- (c) ImageNet, when it runs: each self-supervised ResNet-50's penalty at every cut is at most 5
  points (one network each: a test-set interval only).
- (d) ImageNet's random control (Fig. 2B): an untrained ResNet-50 (`imagenet_random_seed`) stitched
  the same way is not stitching-connected: its mean penalty over the later half of the cuts is
  above 3 points.
"""

LABEL_NOISE_HEADER = """
# 03 · Changing the label distribution (Fig. 3A)

**Claim (Section 5 of Bansal, Nakkiran & Barak, 2021: "all roads lead to Rome").** The early
layers of a ResNet-18 learn much the same representation whatever the labels it is trained on, as
long as they carry some information: bottoms trained on the coarse Objects-vs-Animals task or with
10% or 50% of the labels replaced by random ones stitch into a top trained on clean CIFAR-10 labels
at the first half of the cut points about as well as another clean-label seed does. A bottom
trained on 100% random labels is the exception. CKA between each weak model and the clean top is
computed at the same cuts.

For each seed pair, the clean top (top seed) and the clean reference bottom (bottom seed) are
`01_connectivity`'s ResNet-18 at `width`, taken from the artifact store. Every weak bottom has a
seed of its own, so that it shares neither initialisation nor data order with the reference it is
judged against, and trains on the same images. The stitcher trains on clean labels of images the
top was trained on.
"""

LABEL_NOISE_STATISTICS = """
The paper's claim is relative ("as good as" the clean model's layers), so each statistic is a weak
bottom's mean penalty over the first half of the cuts *minus* that of the clean reference bottom of
the same seed pair, which takes out what the stitcher itself costs.
- (a) for each weak bottom but the 100%-noise one: at most 3 points (Table 1's "close").
- (b) the 100%-noise bottom: more than 3 points.
"""

MORE_HEADER = """
# 04 · More is better: samples (Fig. 2C), training time (Fig. 3B), width (Fig. 3C), CKA (Fig. 7), freeze training (Fig. 9)

**Claim (Section 6 of Bansal, Nakkiran & Barak, 2021).** Representations learned with more data,
more training time or more width are better versions of the same representation: they plug into a
weaker model's top through a single linear stitching layer and *lower* its error (a negative
stitching penalty), while the weaker model's representation does not help a stronger one. Early
layers converge faster during training, and need fewer samples: the layers whose penalty is near
zero when trained on few samples can be trained on those few, frozen, and the rest trained on all
images, ending near a normally trained network (Appendix B.4). CKA is computed for the same pairs
(Appendix B.2.3).

For each seed pair:
- **samples**: bottoms (bottom seed) trained on `fewer_samples`, `top_samples` and `samples` images,
  stitched into a top (top seed) trained on `top_samples`. Every one takes as many SGD steps as the
  base recipe, as in the paper (64K steps whatever the size). The stitcher only sees the top's images.
- **training time**: one run of `epochs` (top seed), checkpointed at `checkpoint_epochs`, each
  stitched into the `top_epoch` checkpoint of the same run (the paper: 40, 80 and 160 into 80).
- **width**: bottoms of each of `widths` into the `width` top, and the `width` bottom into tops
  of each width (the reverse direction).
- **freeze training**: the longest run of stages from the input whose mean penalty over the pairs,
  as the `fewer_samples` bottom, stays within `freeze_max_penalty` (stitching at a cut tests the
  whole bottom up to it, so only a prefix can be frozen) is copied from the pair's model and frozen;
  the rest trains from scratch on all 50K training images, beside a network trained normally on
  them for the same number of steps. The paper also froze top layers ({8, 9, 11}) chosen by the
  opposite experiment ("a top model with 5K and bottom with 50K"): that normally trained network
  stitched into the `fewer_samples` model as the top (the **samples, reversed** pair). Stitching
  at a cut keeps the top's whole part above it, so only
  a suffix can be frozen: the stages above the shallowest cut from which on every mean penalty is
  within `freeze_max_penalty`. A third run freezes that prefix and those top layers together.

Run: `papermill 04_more_is_better.ipynb out.ipynb -p samples 25000` from `notebooks/` (any working
directory works: give the notebook's path).
"""

MORE_STATISTICS = """
- (a) a stronger bottom (more samples; wider, in both directions of the width experiment; trained
  longer) plugs in and helps: its mean penalty over the later half of the cuts is below 0.
- (b) a narrower bottom does not help: its mean penalty over the later half is at least 0.
- (c) early layers converge first: for the earliest checkpoint, the mean penalty over the later
  half minus that over the first half is above 0.
- (d) freeze training ends within 3 points of normal training (Appendix B.4; Section 6 says 2),
  for the bottom prefix alone and for the prefix with the top layers (the paper's run). When no
  stage is near zero, the prediction cannot be tested and the verdict is inconclusive.
"""

ABLATIONS_HEADER = """
# 05 · Ablations: kernel size (Fig. 4), fine-tuning vs stitching (Fig. 8), BatchNorm and initialisation, Table 1

**Claims (Appendices B.1 and B.3 of Bansal, Nakkiran & Barak, 2021).** The stitcher's kernel size
barely matters: a k × k stitcher for k in {1, 3, 5, 7, 9} between two ResNet-18 seeds costs about
what the 1 × 1 one does, so the paper keeps k = 1. Every k × k stitcher starts from the
least-squares 1 × 1 fit as its centre tap and trains at the profile's learning rate divided by k:
an Adam step moves each weight by about the learning rate, so with k² times the fan-in the output
moves about k times as far as a 1 × 1 stitcher's. Fine-tuning overestimates similarity:
re-initialising and training the top layers above a frozen *random* bottom recovers much of a
trained network's accuracy, while stitching that random bottom into a trained top (only the
stitcher trains) does not.

**Section 3's two arguments, measured.** *Useless coordinates*: `useless_ratio` times the
representation's channels of Gaussian noise (at its root mean square) appended to the bottom's
representation at every cut: CKA falls, but the stitcher can throw them away. *Permuted
positions*: one fixed random permutation of the bottom's spatial positions, the same for every
image: an orthogonal map of the flattened features, so CKA does not move, but a 1 × 1 stitcher
cannot put the pixels back. The pooled vector has no positions: that cut is skipped. Each against
the same pair unchanged.

**What the paper could not show.** The original code let the frozen networks' BatchNorm statistics
drift during stitcher training (`bn_policy="drift"`); here they stay in eval mode. Both are
measured on the same pairs, and on the random control: a fresh network's running statistics
(what `01` uses) against the batch statistics the authors' random network ran on. The stitcher
starts from a least-squares fit by default; a random start is measured beside it, and the
**stitcher convergence** panel (first seed pair) trains both starts for `convergence_steps` and
the profile's own length, to show where the penalty stops moving. (The authors trained each
stitcher for 120K steps; the paper profile keeps 10 epochs, 3,900 steps, and its convergence
panel measures up to 120K.) **Table 1** of the paper (CKA vs stitching) is rebuilt with our
numbers from the stored results of `01`-`04` (computed now if absent).

For each seed pair, the ResNet-18 pair is `01`'s pair at `width`, and the ResNet-164-family top
(ResNet-11 at smoke) and random bottom are `01`'s too, all from the artifact store.
"""

ABLATIONS_STATISTICS = """
- (a) for each k > 1: the mean penalty over the feature-map cuts minus k = 1's lies within ±3 points
  (Table 1's "close" bound for "minimal impact").
- (b) fine-tuning makes a random bottom look better than stitching does: the mean over the cuts of
  the stitching penalty minus the fine-tuned network's is above 0. (At the last block and the
  pooled cut fine-tuning trains only the final BatchNorm and the classifier, a linear probe like
  the stitch; the mean includes them, as the paper's figure does.)

- (c) useless coordinates lower CKA: the mean CKA over the cuts with them minus without is below 0;
  but stitching throws them away: the mean penalty with them minus without is at most 3 points.
  (CKA here is the profile's estimator. With the biased one on few images a layer's own Gram
  matrix can be close to diagonal, and the noise, which adds about a multiple of the centring
  matrix, can then raise CKA: the paper's intuition is not guaranteed at every cut.)
- (d) permuting positions leaves CKA unchanged: the mean CKA over the feature-map cuts, permuted
  minus not, lies within ±1e-6 (zero up to float64 rounding); but stitching pays: the mean penalty,
  permuted minus not, is above 0.
- (e) the random control is not stitching-connected whichever BatchNorm statistics it runs on: its
  mean penalty over the later half of the cuts is above 3 points, for each mode.

The BatchNorm policy, the initialisation and the stitcher's convergence are measured, not judged:
the paper makes no claim.
"""


README = HERE.parent / "README.md"
BEGIN, END = "<!-- parameters: generated by tools/make_notebooks.py -->", "<!-- parameters: end -->"


def readme_block():
    """Each experiment's parameter table and the paper profile's estimated cost, from the plans."""
    parts = [BEGIN]
    for e in EXPERIMENTS.values():
        parts += [f"**`{e.notebook}`** ({e.title})", "", markdown_table(e.Params), ""]
    speedup, source = fast_path_speedup()
    rows = ["| notebook | tasks | images (millions) | PFLOP | H200-hours (fp32) | wall hours, 1 H200 (fp32) | "
            "wall hours, 8 H200s (fp32) | wall hours, 1 H200 (`-p precision bf16`) |",
            "|---|---|---|---|---|---|---|---|"]
    fast = ["| notebook | tasks | PFLOP | wall minutes, 1 H200, at the fp32 rate | wall minutes, 1 H200, fast path |",
            "|---|---|---|---|---|"]
    for e in EXPERIMENTS.values():
        plan = make_plan(e.name, "paper")
        total = plan.cost().iloc[-1]
        rows.append(f"| `{e.notebook}` | {total['count']} | {total['images'] / 1e6:,.0f} | {total['pflop']:,.0f} | "
                    f"{total['gpu_hours']:,.1f} | {plan.wall_hours(1):,.1f} | {plan.wall_hours(8):,.1f} | "
                    f"{plan.wall_hours(1, speedup=speedup):,.1f} |")
        plan = make_plan(e.name, "fast")
        total = plan.cost().iloc[-1]
        fast.append(f"| `{e.notebook}` | {total['count']} | {total['pflop']:,.1f} | {plan.wall_hours(1) * 60:,.0f} | "
                    f"{plan.wall_hours(1, speedup=speedup) * 60:,.1f} |")
    parts += ["Estimated cost of the paper profile, from each notebook's plan (`python -m stitchlib plan "
              "<notebook> --profile paper`; `05` includes `01`-`04`, whose results its Table 1 reads, so its row "
              "is the whole suite). Wall hours: the plan's tasks scheduled as the ray executor does (longest "
              "chain first), one task per GPU at the measured fp32 rate; sharing a GPU between tasks "
              "(`gpu_fraction` < 1) is assumed to add no throughput, so these are upper bounds where it does. The "
              f"last column is the same at the fast path's speed-up over fp32, x{speedup:g} ({source}):",
              "", *rows, "",
              "The fast profile, estimated the same way (`05`'s row is the whole suite; start-up, evaluation "
              f"overheads and figures not counted). The fast path's column is at x{speedup:g} ({source}):",
              "", *fast, END]
    return "\n".join(parts)


def write_readme():
    text = README.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    README.write_text(text[:start] + readme_block() + text[end:])


if __name__ == "__main__":
    write_readme()
    notebook("01_connectivity", "connectivity", CONNECTIVITY_HEADER, ["close", "random_early", "random_late"],
             CONNECTIVITY_STATISTICS)
    notebook("02_ssl_vs_e2e", "ssl_vs_e2e", SSL_HEADER, ["ssl_cifar", "cka_ssl", "ssl_imagenet", "random_late"],
             SSL_STATISTICS)
    notebook("03_label_noise", "label_noise", LABEL_NOISE_HEADER, ["label_early"], LABEL_NOISE_STATISTICS)
    notebook("04_more_is_better", "more_is_better", MORE_HEADER, ["better", "training_time", "freeze", "freeze_main"],
             MORE_STATISTICS)
    notebook("05_ablations", "ablations", ABLATIONS_HEADER, ["kernel", "finetune", "useless_cka", "useless_stitch",
                                                             "permuted_cka", "permuted_stitch", "random_late"],
             ABLATIONS_STATISTICS,
             extra=["stitchlib.claims.table1(results).set_index(\"method\").T  # Table 1 with our numbers (table1.csv)"])
