"""`explore`: an interactive explorer (ipywidgets) over a results table, for a notebook.

A panel (the table's `panel` column), the lines of that panel (its pairs), a metric (penalty after
training, at initialisation, or CKA) and an x axis (the cut, or a numeric column of the panel such as
the number of samples) give a figure, redrawn on every change, and the rows behind it as an HTML table.

The source is an experiment's `Results` (what a notebook's compute call returns), a DataFrame, or the
path of a CSV written by stitchlib (`results/<profile>/<notebook>_summary.csv`, or the tidy table
`figures/<profile>/<notebook>.csv`): nothing is read from the store. A summary (one row per comparison
and cut, with `<metric>_low/_high`) is drawn as it is, bands from its intervals. A tidy table (one row
per seed pair and cut, with `pair_index`) is first summarised by `stitchlib.claims.summary_table`, the
library's own summary: the mean over the seed pairs and its interval (from a CSV, which carries no
per-image correctness, over the seed pairs only; from `Results`, over the test images too). A table with
neither intervals nor `pair_index` is drawn as it is, without bands, and as points where several rows
share a line and an x.

    ex = stitchlib.explore("results/smoke/03_label_noise_summary.csv")
    ex                                   # in a notebook: the widget
    ex.select(pairs=["clean labels", "100% label noise"], metric="cka")
    ex.rows, ex.figure                   # the rows behind the figure, the figure (matplotlib)

ipywidgets is imported only when `explore` is called (`pip install 'stitchlib[notebooks]'`).
"""

from __future__ import annotations

import html
import io
import itertools
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

__all__ = ["explore", "Explorer", "load_table", "METRICS"]

# metric column -> its name in the explorer
METRICS = {"penalty": "penalty after training", "penalty_init": "penalty at initialisation", "cka": "CKA"}
REQUIRED = ("panel", "pair", "cut_index", "cut")
CUT = "cut_index"  # the default x: the cut points, ticks named by the `cut` column
# Columns that never tell two lines apart: numbers measured per row, seeds, the run's profile.
_NOT_KEYS = {"profile", "pairs", "pair_index", "seed_top", "seed_bottom", "error", "error_init", "top_error",
             "bottom_error", "cut_index", "cut", "panel", "series", "line"}
_INSTALL = "pip install 'stitchlib[notebooks]'"


# ------------------------------------------------------------------ reading the source

def _results_class():
    from .experiments.core import Results

    return Results


def _read_csv(source) -> pd.DataFrame:
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"explore: no such file {str(path)!r}: give the path of a CSV written by stitchlib, "
                                "e.g. results/smoke/01_connectivity_summary.csv or figures/<profile>/<notebook>.csv")
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*_summary.csv"))
        hint = f" (it holds {', '.join(found)})" if found else ""
        raise ValueError(f"explore: {str(path)!r} is a folder{hint}: give the path of one CSV results table")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"explore: {str(path)!r} is not a CSV results table: {e}") from None


def _check_table(frame: pd.DataFrame, what: str) -> None:
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"explore: {what} is not a stitchlib results table: it lacks the columns {missing} (a results "
                         f"table has {list(REQUIRED)} and at least one of {list(METRICS)}; it has "
                         f"{list(map(str, frame.columns))})")
    if frame.empty:
        raise ValueError(f"explore: {what} has no rows")
    if not any(m in frame.columns and frame[m].notna().any() for m in METRICS):
        raise ValueError(f"explore: {what} has no values of any metric: a results table has at least one of the "
                         f"columns {list(METRICS)} with numbers (it has {list(map(str, frame.columns))})")
    if not pd.api.types.is_numeric_dtype(frame["cut_index"]) or frame["cut_index"].isna().any():
        raise ValueError(f"explore: {what}'s column 'cut_index' must hold the cut numbers 0, 1, ... "
                         f"(it holds {frame['cut_index'].head(3).tolist()}...)")


def _is_summary(frame: pd.DataFrame) -> bool:
    return any(f"{m}_low" in frame.columns for m in METRICS)


def _summarise(frame: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """A tidy table (one row per seed pair and cut) through the library's own summary."""
    from .claims import summary_table

    frame = frame.copy()
    for m in METRICS:  # summary_table reads all three
        if m not in frame.columns:
            frame[m] = math.nan
    return summary_table(SimpleNamespace(table=frame, setup=SimpleNamespace(params={"confidence": confidence})))


def load_table(source, *, confidence: float = 0.95) -> tuple[pd.DataFrame, str]:
    """The table `explore` draws from `source` (see the module's docstring) and a title naming it.
    Raises FileNotFoundError for a missing path, TypeError for an unsupported source, ValueError for
    a table that is not a stitchlib results table. `confidence`: the intervals' level when a tidy
    DataFrame or CSV is summarised (a `Results` uses its run's)."""
    if isinstance(source, _results_class()):
        from .claims import summary_table

        table, title = source.table, f"{source.experiment.notebook}: {source.experiment.title}"
        _check_table(table, f"the results of {source.setup.experiment!r}")
        return summary_table(source), title
    if isinstance(source, (str, Path)):
        frame, what = _read_csv(source), repr(str(source))
        title = Path(source).name
    elif isinstance(source, pd.DataFrame):
        frame, what, title = source, "the DataFrame", ""
    else:
        raise TypeError(f"explore: cannot explore a {type(source).__name__}: give the Results of a notebook's compute "
                        "call (e.g. stitchlib.connectivity(run)), a pandas DataFrame, or the path (str or Path) of a "
                        "CSV results table")
    _check_table(frame, what)
    if not _is_summary(frame) and "pair_index" in frame.columns:
        frame = _summarise(frame, confidence)
    return frame.reset_index(drop=True), title


# ------------------------------------------------------------------ lines and series

def _fmt(column: str, value) -> str:
    if isinstance(value, float) and math.isnan(value):
        return f"no {column}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{column} {value:g}"
    return str(value)


def _key_columns(frame: pd.DataFrame, base: list[str], unique_by: list[str], candidates: list[str]) -> list[str]:
    """`base` plus, in table order, each candidate column that tells apart rows sharing `unique_by`,
    until every (key, unique_by) is one row or the candidates run out."""
    key = list(base)
    for column in candidates:
        if not frame.duplicated(key + unique_by).any():
            break
        if frame.groupby(key + unique_by, dropna=False)[column].nunique(dropna=False).max() > 1:
            key.append(column)
    return key


def _label(row: tuple, key: list[str]) -> str:
    first, *rest = (_fmt(c, v) for c, v in zip(key, row))
    return first + (f" ({', '.join(rest)})" if rest else "")


class _Panel:
    """One panel's rows, each with its line (`line`: the pair, plus whatever else tells two lines
    with one pair apart, e.g. the architecture or the number of steps), its metrics and the x axes
    it offers."""

    def __init__(self, name: str, rows: pd.DataFrame):
        self.name = name
        candidates = [c for c in rows.columns if c not in _NOT_KEYS and c != "pair" and not _is_value(c)
                      and not str(c).startswith("_") and _hashable(rows[c]) and rows[c].nunique(dropna=False) > 1]
        self.candidates = candidates
        key = _key_columns(rows, ["pair"], [CUT], candidates)
        self.rows = rows.assign(line=[_label(r, key) for r in rows[key].itertuples(index=False)])
        self.lines = list(dict.fromkeys(self.rows["line"]))
        self.pairs = list(dict.fromkeys(self.rows["pair"]))
        self.metrics = [m for m in METRICS if m in rows.columns and rows[m].notna().any()]
        self.xs = [CUT] + [c for c in candidates if pd.api.types.is_numeric_dtype(rows[c]) and self._lines_of(c)]

    def _lines_of(self, x: str) -> bool:
        """Whether `x` as the x axis gives some series two points or more."""
        f = self.rows[self.rows[x].notna()]
        return bool(len(f)) and f.groupby(self.series_key(x), dropna=False)[x].nunique().max() > 1

    def series_key(self, x: str) -> list[str]:
        if x == CUT:
            return ["line"]
        f = self.rows[self.rows[x].notna()]
        return _key_columns(f, ["cut"], [x], ["pair"] + [c for c in self.candidates if c != x])


def _hashable(values: pd.Series) -> bool:
    try:
        values.nunique(dropna=False)
        return True
    except TypeError:  # arrays, tensors: not labels
        return False


def _is_value(column: str) -> bool:
    return column in METRICS or any(column == f"{m}_{end}" for m in METRICS for end in ("low", "high"))


# ------------------------------------------------------------------ the explorer

class Explorer:
    """The widget `explore` returns: `select(...)` changes it as its controls do; `rows` is the
    table behind the current figure (one row per point drawn, its series in `series`), `figure`
    the current matplotlib figure, `widget` the ipywidgets box a notebook shows."""

    def __init__(self, table: pd.DataFrame, title: str = ""):
        import ipywidgets as W

        self.table = table
        self.title = title
        panels = (_Panel(str(name), f) for name, f in table.groupby("panel", sort=False, dropna=False))
        self._panels = {p.name: p for p in panels if p.metrics}  # a panel with no numbers has nothing to draw
        self._syncing = False
        self.state: dict = {}
        self.rows: pd.DataFrame = pd.DataFrame()
        self.figure = None
        self.png = b""

        layout = W.Layout(width="320px")
        style = {"description_width": "60px"}
        self._panel = W.Dropdown(options=list(self._panels), description="panel", layout=layout, style=style)
        self._metric = W.Dropdown(description="metric", layout=layout, style=style)
        self._x = W.Dropdown(description="x axis", layout=layout, style=style)
        self._pairs = W.SelectMultiple(description="pairs", layout=W.Layout(width="460px"), style=style)
        self._status = W.HTML()
        self._image = W.Image(format="png", layout=W.Layout(max_width="100%"))
        self._html = W.HTML()
        for w, name in ((self._panel, "panel"), (self._metric, "metric"), (self._x, "x"), (self._pairs, "pairs"),
                        (self._image, "figure"), (self._html, "rows"), (self._status, "status")):
            w.add_class(f"stitchlib-explore-{name}")
            if w in (self._panel, self._metric, self._x, self._pairs):
                w.observe(self._changed(name), names="value")
        self.widget = W.VBox([W.HBox([W.VBox([self._panel, self._metric, self._x]), self._pairs]), self._status,
                              self._image, self._html])
        self.widget.add_class("stitchlib-explore")
        first = next(iter(self._panels.values()))
        self.select(panel=first.name)

    # -------------------------------------------------------------- what can be chosen

    @property
    def panels(self) -> list[str]:
        return list(self._panels)

    def pairs(self, panel: str | None = None) -> list[str]:
        """The lines of `panel` (default: the current one) the pairs control lists."""
        return list(self._panel_named(panel or self.state["panel"]).lines)

    def metrics(self, panel: str | None = None) -> list[str]:
        """The metric columns with values in `panel` (default: the current one)."""
        return list(self._panel_named(panel or self.state["panel"]).metrics)

    def x_axes(self, panel: str | None = None) -> list[str]:
        """The x axes `panel` offers: "cut_index" (the cuts) and its numeric columns that give a line
        two points or more."""
        return list(self._panel_named(panel or self.state["panel"]).xs)

    def _panel_named(self, name) -> _Panel:
        if name not in self._panels:
            raise ValueError(f"explore: no panel {name!r}: the panels are {self.panels}")
        return self._panels[name]

    def _metric_named(self, metric, panel: _Panel) -> str:
        by_label = {label.lower(): m for m, label in METRICS.items()}
        m = metric if metric in METRICS else by_label.get(str(metric).lower())
        present = [m for m in METRICS if any(m in p.metrics for p in self._panels.values())]
        names = ", ".join(f"{k!r} ({METRICS[k]})" for k in present)
        if m is None or m not in present:
            raise ValueError(f"explore: the table has no metric {metric!r}: its metrics are {names}")
        if m not in panel.metrics:
            raise ValueError(f"explore: panel {panel.name!r} has no values of {m!r} ({METRICS[m]}): its metrics are "
                             + ", ".join(f"{k!r} ({METRICS[k]})" for k in panel.metrics))
        return m

    def _lines_named(self, pairs, panel: _Panel) -> list[str]:
        if isinstance(pairs, str):
            pairs = [pairs]
        chosen = []
        for name in pairs:
            if name in panel.lines:
                chosen.append(name)
            elif name in panel.pairs:
                chosen += list(dict.fromkeys(panel.rows.loc[panel.rows["pair"] == name, "line"]))
            else:
                also = [p for p in panel.pairs if p not in panel.lines]
                raise ValueError(f"explore: panel {panel.name!r} has no pair {name!r}: its pairs are {panel.lines}"
                                 + (f" (or by pair: {also})" if also else ""))
        return [line for line in panel.lines if line in chosen]  # in the panel's order

    # -------------------------------------------------------------- changing it

    def select(self, panel: str | None = None, pairs=None, metric: str | None = None, x: str | None = None):
        """Change what the explorer shows, as its controls do, and redraw: `panel` (a value of the
        `panel` column; its lines all shown unless `pairs` says), `pairs` (lines of the panel, by
        their label or their pair: several lines with one pair are chosen together), `metric`
        ("penalty", "penalty_init", "cka", or their names in the control) and `x` ("cut_index" or
        "cut" for the cuts, or a numeric column of the panel). Unknown names raise ValueError
        listing the valid ones; nothing changes then. Returns the explorer."""
        old = dict(self.state)
        p = self._panel_named(panel if panel is not None else old["panel"])
        moved = p.name != old.get("panel")
        if pairs is not None:
            lines = self._lines_named(pairs, p)
        else:
            lines = p.lines if moved else old["lines"]
        if metric is not None:
            m = self._metric_named(metric, p)
        else:
            m = old.get("metric") if old.get("metric") in p.metrics else p.metrics[0] if p.metrics else None
        if m is None:
            raise ValueError(f"explore: panel {p.name!r} has no values of any metric")
        if x is not None:
            x = CUT if x == "cut" else x
            if x not in p.xs:
                raise ValueError(f"explore: panel {p.name!r} offers no x axis {x!r}: its x axes are {p.xs} "
                                 "('cut_index': the cuts)")
        else:
            x = old.get("x") if old.get("x") in p.xs else CUT
        self.state = dict(panel=p.name, lines=list(lines), metric=m, x=x)
        self._sync()
        self._redraw()
        self._status.value = ""
        return self

    def _sync(self) -> None:
        """The controls show the state (their own change events ignored meanwhile)."""
        p, s = self._panels[self.state["panel"]], self.state
        self._syncing = True
        try:
            self._panel.value = p.name
            self._metric.options = [(METRICS[m], m) for m in p.metrics]
            self._metric.value = s["metric"]
            self._x.options = [("cut" if c == CUT else c, c) for c in p.xs]
            self._x.value = s["x"]
            self._pairs.options = p.lines
            self._pairs.rows = min(max(len(p.lines), 3), 8)
            self._pairs.value = tuple(s["lines"])
        finally:
            self._syncing = False

    def _changed(self, name):
        def on_change(change):
            if self._syncing:
                return
            try:
                value = change["new"]
                self.select(**{name: list(value) if name == "pairs" else value})
            except Exception as e:  # shown in the widget: a callback's traceback would go to a log nobody reads
                self._status.value = f'<span style="color:#b00">explore: {html.escape(str(e))}</span>'
        return on_change

    # -------------------------------------------------------------- drawing

    def _current_rows(self) -> pd.DataFrame:
        p, s = self._panels[self.state["panel"]], self.state
        m, x = s["metric"], s["x"]
        f = p.rows[p.rows["line"].isin(s["lines"]) & p.rows[m].notna() & p.rows[x].notna()]
        key = p.series_key(x)
        if x == CUT:
            series = f["line"]
        else:
            series = pd.Series([_label(r, key) for r in f[key].itertuples(index=False)], index=f.index, dtype=object)
        f = f.assign(series=series)
        order = {line: i for i, line in enumerate(p.lines)}
        f = f.assign(_order=f["line"].map(order)).sort_values(["_order", "cut_index", x] if x != CUT else
                                                             ["_order", "cut_index"], kind="stable")
        if x != CUT:  # series by cut (then line), each along x
            first = {s: i for i, s in enumerate(dict.fromkeys(f.sort_values(["cut_index", "_order"])["series"]))}
            f = f.assign(_order=f["series"].map(first)).sort_values(["_order", x], kind="stable")
        return f.drop(columns="_order").reset_index(drop=True)

    def _redraw(self) -> None:
        from matplotlib.figure import Figure
        import matplotlib as mpl

        from .plotting import _PALETTE, _ROWS, _SIZES, _STYLE, TOP_ALONE

        s = self.state
        m, x = s["metric"], s["x"]
        rows = self._current_rows()
        self.rows = rows
        low, high = f"{m}_low", f"{m}_high"
        banded = low in rows.columns and high in rows.columns and rows[low].notna().any()
        points = rows.duplicated(["series", x]).any()  # a table with no summary and no pair_index
        with mpl.rc_context(_STYLE):
            fig = Figure(figsize=(7.5, 3.6), dpi=100, layout="constrained")
            ax = fig.add_subplot()
            # Colours by the panel's series, not the selection's: a line keeps its colour when others go.
            everything = self._panels[s["panel"]].rows
            if x == CUT:
                names = self._panels[s["panel"]].lines
            else:
                key = self._panels[s["panel"]].series_key(x)
                names = [_label(r, key) for r in everything.sort_values("cut_index", kind="stable")[key]
                         .drop_duplicates().itertuples(index=False)]
            colors = dict(zip(names, itertools.cycle(_PALETTE)))
            alpha = 0.15 if rows["series"].nunique() <= 4 else 0.07  # many bands: each lighter
            for label, f in rows.groupby("series", sort=False):
                color = colors.get(label, "k")
                ax.plot(f[x], f[m], marker="o", ls="none" if points else "-", color=color, label=label, gid="data")
                if banded and f[low].notna().any():
                    ax.fill_between(f[x], f[low], f[high], color=color, alpha=alpha, lw=0, gid="band")
            if rows.empty:
                ax.text(0.5, 0.5, "nothing to draw: no pair selected" if not s["lines"] else
                        f"no values of {METRICS[m]} for these pairs", ha="center", va="center", transform=ax.transAxes)
            if m == "cka":
                ax.set_ylim(min(0, rows[m].min()) if len(rows) else 0, 1.05)
            else:
                ax.axhline(0, color="0.6", lw=0.8, label=TOP_ALONE, gid="zero")
            self._ticks(ax, rows, x)
            ax.set_ylabel(_ROWS[m][1], fontsize=_SIZES["label"])
            heading = f"{s['panel']}: {METRICS[m]}" + ("; bands: the table's intervals" if banded else "")
            ax.set_title(f"{self.title}\n{heading}" if self.title else heading, fontsize=_SIZES["title"])
            if len(rows):
                fig.legend(loc="outside right upper", fontsize=_SIZES["legend"], frameon=False)
            for a in fig.axes:
                a.tick_params(labelsize=_SIZES["tick"])
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100)
        self.figure = fig
        self.png = buf.getvalue()
        self._image.value = self.png
        self._html.value = self._rows_html(rows)

    def _ticks(self, ax, rows: pd.DataFrame, x: str) -> None:
        from .plotting import _SIZES

        if x == CUT:
            cuts = rows[["cut_index", "cut"]].drop_duplicates()
            if cuts["cut_index"].is_unique:
                cuts = cuts.sort_values("cut_index")
                ax.set_xticks(cuts["cut_index"], cuts["cut"], rotation=45, ha="right", rotation_mode="anchor")
                ax.set_xlabel("cut point (bottom ends after)", fontsize=_SIZES["label"])
            else:  # lines of different networks: one cut index, several names
                ax.set_xticks(sorted(cuts["cut_index"].unique()))
                ax.set_xlabel("cut index (the lines' networks name their cuts differently: see the rows below)",
                              fontsize=_SIZES["label"])
            return
        values = sorted(rows[x].unique())
        if values and values[0] > 0 and values[-1] / values[0] >= 10:  # grows by factors: a log axis
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(values, [f"{v:,g}" for v in values])
        ax.set_xlabel(x, fontsize=_SIZES["label"])

    def _rows_html(self, rows: pd.DataFrame) -> str:
        m, x = self.state["metric"], self.state["x"]
        columns = ["series", "cut"] + ([x] if x != CUT else []) + [m, f"{m}_low", f"{m}_high", "pairs"]
        shown = rows[[c for c in dict.fromkeys(columns) if c in rows.columns]]
        if x == CUT:
            shown = shown.rename(columns={"series": "line"})
        digits = 3 if m == "cka" else 2
        formats = {c: (lambda v, d=digits: "" if pd.isna(v) else f"{v:.{d}f}") for c in (m, f"{m}_low", f"{m}_high")}
        table = shown.to_html(index=False, formatters=formats, float_format=lambda v: f"{v:,g}", na_rep="", border=0,
                              classes="stitchlib-explore-table")
        style = ("<style>.stitchlib-explore-table{border-collapse:collapse;font-size:12px}"
                 ".stitchlib-explore-table th,.stitchlib-explore-table td{padding:1px 8px;text-align:right}"
                 ".stitchlib-explore-table tr:nth-child(even){background:#f4f4f4}</style>")
        return (f"{style}<div><b>{len(rows)} rows behind the figure</b> (<code>.rows</code>; pairs: how many seed "
                f"pairs each mean is over)</div><div style='max-height:320px;overflow:auto'>{table}</div>")

    # -------------------------------------------------------------- display

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def __repr__(self) -> str:
        s = self.state
        return (f"<stitchlib explorer: panel {s['panel']!r}, {METRICS[s['metric']]}, {len(s['lines'])} of "
                f"{len(self.pairs())} lines, {len(self.rows)} rows>")


def explore(source, *, confidence: float = 0.95) -> Explorer:
    """An interactive explorer of a results table (see the module's docstring): `source` is the
    `Results` of a notebook's compute call, a DataFrame, or the path of a CSV results table.
    `confidence`: the intervals' level when a tidy table (one row per seed pair and cut) is
    summarised. Shown by a notebook as a widget; `select`, `rows` and `figure` work without one."""
    table, title = load_table(source, confidence=confidence)
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        raise ImportError(f"stitchlib.explore needs ipywidgets: {_INSTALL}") from None
    return Explorer(table, title)
