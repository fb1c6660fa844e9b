"""Results prose rendered from result tables, never typed by hand: a notebook's results section
(`report`) and the README's (`python -m stitchlib readme`, from the tables under results/)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .statistics import MIN_PAIRS_TO_DECIDE

__all__ = ["report", "claims_markdown", "render_readme", "README_BEGIN", "README_END"]

README_BEGIN = "<!-- results:begin (written by `python -m stitchlib readme`; do not edit by hand) -->"
README_END = "<!-- results:end -->"


def _number(x) -> str:
    return "n/a" if pd.isna(x) else f"{x:.2f}"


def claims_markdown(claims: pd.DataFrame, confidence: float = 0.95) -> str:
    """A claims table as Markdown: claim, model, mean [interval], threshold, paper, verdict."""
    lines = [f"| claim | model | mean [{confidence:.0%} interval] | threshold | paper | verdict |",
             "|---|---|---|---|---|---|"]
    for _, c in claims.iterrows():
        note = c.get("worst_cut")
        # An every-cut claim names its deciding cut; other claims may carry a note instead.
        where = (f" ({'worst cut: ' if 'every cut' in c['claim'] else ''}{note})"
                 if isinstance(note, str) and note else "")
        lines.append(f"| {c['claim']} | {c['model']}{where} | {_number(c['statistic'])} [{_number(c['low'])}, "
                     f"{_number(c['high'])}] | {c['threshold']} | {c['paper']} | **{c['verdict']}** |")
    return "\n".join(lines)


def _counts(claims: pd.DataFrame) -> str:
    counts = claims["verdict"].value_counts()
    return ", ".join(f"{counts.get(v, 0)} {v}" for v in ("holds", "fails", "inconclusive"))


def _undecided(n_pairs: int) -> str:
    if n_pairs >= MIN_PAIRS_TO_DECIDE:
        return ""
    return (f" With {n_pairs} seed pairs no verdict about trained seed pairs is decided (at least "
            f"{MIN_PAIRS_TO_DECIDE} are needed for a verdict that another machine would reproduce: "
            "`stitchlib.statistics`); the means and intervals show where the numbers lie.")


def report(results, claims: pd.DataFrame):
    """The notebook's results section: every number in it comes from `results` and `claims`.
    Returns IPython Markdown where IPython is present (a notebook), else the text."""
    p = results.setup.params
    models = results.models
    n_pairs = len(p["seeds"]) // 2
    text = [f"**Results at the `{results.setup.profile}` profile**, rendered from this run's tables: "
            f"{n_pairs} seed pairs, {p['test_samples']:,} test images, base models at "
            f"{models['test_error'].min():.1f}-{models['test_error'].max():.1f}% test error. "
            f"Verdicts: {_counts(claims)}.{_undecided(n_pairs)}", "", claims_markdown(claims, p["confidence"])]
    markdown = "\n".join(text)
    try:
        from IPython.display import Markdown
    except ImportError:  # the library runs without IPython (a GPU machine's plain Python)
        return markdown
    return Markdown(markdown)


def render_readme(readme: Path, results_dir: Path) -> str:
    """The README's text with its results block rewritten from the tables in `results_dir`
    (<notebook>_claims.csv, <notebook>_models.csv and timings.csv, as the smoke suite wrote them)."""
    text = Path(readme).read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{readme} has no results block: add the lines\n{README_BEGIN}\n{README_END}")
    results_dir = Path(results_dir)
    parts = []
    timings = results_dir / "timings.csv"
    if timings.exists():
        t = pd.read_csv(timings)
        first = t.iloc[0]
        parts.append(f"Measured by `make figures` (the {first['executor']} executor) with an empty store on {first['cpu']} "
                     f"({first['cores']} cores), {first['date']}: " + ", ".join(
                         f"{r.step if r.step.startswith('compute') else f'`{r.step}`'} {r.seconds:.0f} s"
                         for r in t.itertuples())
                     + f"; {t['seconds'].sum():.0f} s ({t['seconds'].sum() / 60:.1f} min) in all.")
        serial = results_dir / "timings_serial.csv"  # the same suite on the serial executor, beside it
        if serial.exists():
            s = pd.read_csv(serial)
            # Another run, perhaps of another session (machines here differ up to 2x between
            # sessions): no ratio against this one; the side-by-side ratio is in its bench file.
            parts[-1] += (f" The serial executor (the same one thread per task, so the same numbers) took "
                          f"{s['seconds'].sum():.0f} s ({s['seconds'].sum() / 60:.1f} min) on {s.iloc[0]['cpu']} "
                          f"({s.iloc[0]['cores']} cores) in `bench/executor_speed.py`'s side-by-side run of "
                          f"{s.iloc[0]['date']}, whose file under `bench/results/` has both executors' times and "
                          "their ratio.")
    from .experiments import EXPERIMENTS  # the registry: every notebook, in order

    total = []
    for name in (e.notebook for e in EXPERIMENTS.values()):
        path = results_dir / f"{name}_claims.csv"
        if not path.exists():
            continue
        claims = pd.read_csv(path, keep_default_na=False, na_values=[""])
        total.append(claims)
        models = results_dir / f"{name}_models.csv"
        line = f"**`{name}`**: {_counts(claims)}"
        if models.exists():
            m = pd.read_csv(models)
            line += f"; base models at {m['test_error'].min():.1f}-{m['test_error'].max():.1f}% test error"
        parts += ["", line + ".", "", claims_markdown(claims)]
    if total:
        everything = pd.concat(total)
        parts.insert(0, f"All claims at this profile: {_counts(everything)}."
                        f"{_undecided(int(everything['pairs'].max()))}\n")
    block = "\n".join([README_BEGIN, *parts, README_END])
    return re.sub(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), lambda _: block, text, flags=re.S)
