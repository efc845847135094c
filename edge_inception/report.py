"""The one report writer: a report is data; its JSON, its Markdown and its plot are three renderings of it.

Every report type (bench, LoadGen scenarios, profile, build candidates, stream summary, fleet, pipeline) provides
:class:`Report`: ``as_dict()`` (what the JSON holds), ``as_markdown()`` and ``as_figure()`` (a :class:`Figure` of
typed panels with their axes and units, or None where the report has no plot). :func:`write_report` checks the output
names, renders every asked-for rendering in memory first, then writes each atomically (:func:`.fileio.atomic_path`):
a rendering that fails (the plot, say) leaves no file at all, and no file is ever half written.

This module sits on the lowest floor (it imports only :mod:`.fileio`, :mod:`.errors` and the standard library;
matplotlib inside :func:`render_png`), so every floor above can hand it its reports.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .errors import OutputPathError
from .fileio import atomic_path, check_outputs
from .fileio import json_text as strict_json
from .names import printable

DPI = 110
TICK_FONT = 8
TITLE_FONT = 9
GROUP_WIDTH = 0.8  # of one category's slot, shared by its bars


@dataclass(frozen=True)
class Axis:
    """An axis: what it measures and its unit ("ms", "%", "samples/s"; "" for a count or a name)."""

    label: str
    unit: str = ""
    low: float | None = None  # None: matplotlib's choice
    high: float | None = None

    @property
    def text(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label


@dataclass(frozen=True)
class Boxes:
    """One box per label: the distribution of its samples (quartiles and whiskers; outliers not drawn)."""

    title: str
    labels: Sequence[str]
    samples: Sequence[Sequence[float]]
    value: Axis


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class Points:
    """A scatter of labelled points, named in a legend (labels drawn beside points of equal value would overlap)."""

    title: str
    points: Sequence[Point]
    x: Axis
    y: Axis


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float]


@dataclass(frozen=True)
class Bars:
    """Bars per category, one bar per series side by side; ``horizontal`` lists the categories down the page, the first
    on top."""

    title: str
    categories: Sequence[str]
    series: Sequence[Series]
    value: Axis
    horizontal: bool = False
    rotation: int = 0  # of the category labels, degrees


Panel = Boxes | Points | Bars


@dataclass(frozen=True)
class Figure:
    """Panels side by side; ``width`` and ``height`` in inches."""

    panels: Sequence[Panel]
    width: float
    height: float = 4.8
    dpi: int = DPI


@runtime_checkable
class Report(Protocol):
    """What every report type provides: its data, and its Markdown and plot made from that data."""

    def as_dict(self) -> Any:
        """The JSON rendering's data (JSON types only)."""

    def as_markdown(self) -> str:
        """The Markdown rendering, ending in a newline."""

    def as_figure(self) -> Figure | None:
        """The plot, or None where this report has none."""


@dataclass
class Rendered:
    """A report made by joining other texts (a composite's Markdown, data assembled elsewhere): the three renderings given."""

    data: Any
    markdown: str = ""
    figure: Figure | None = None

    def as_dict(self) -> Any:
        return self.data

    def as_markdown(self) -> str:
        return self.markdown

    def as_figure(self) -> Figure | None:
        return self.figure


MAX_MD_TEXT = 300  # characters of one outside text in a Markdown line


def md_text(value: object, max_chars: int = MAX_MD_TEXT) -> str:
    """Text from outside (a file or source name, a board's name, an error, a CPU string) as it goes into a Markdown
    rendering: one line (a newline shown as ``\\n``, never a forged heading, list item or table row), control and
    format characters shown as escapes (no escape sequence reaches a terminal that ``cat``s the file), ``|`` escaped
    (no forged table cell), cut at ``max_chars``."""
    return printable(str(value), max_chars).replace("|", "\\|")


def _md_controls_shown(markdown: str) -> str:
    """The last guard of every Markdown rendering (:func:`write_report`): any control or format character but the
    line breaks the renderer wrote shown as an escape, whatever a renderer forgot to pass through :func:`md_text`."""
    return "\n".join(printable(line, len(line)) for line in markdown.split("\n"))


def json_text(data: Any) -> str:
    """The JSON rendering: indented by 2, keys in the report's order, one trailing newline."""
    return strict_json(data, indent=2) + "\n"


def _limits(setter: Any, axis: Axis) -> None:
    if axis.low is not None or axis.high is not None:  # else matplotlib's own, from the data
        setter(axis.low, axis.high)


def _draw(ax: Any, panel: Panel) -> None:
    import numpy as np

    ax.set_title(panel.title, fontsize=TITLE_FONT)
    if isinstance(panel, Boxes):
        ax.boxplot([list(s) for s in panel.samples], showfliers=False)
        ax.set_xticks(range(1, len(panel.labels) + 1), list(panel.labels), fontsize=TICK_FONT, rotation=30, ha="right")
        ax.set_ylabel(panel.value.text)
        _limits(ax.set_ylim, panel.value)
    elif isinstance(panel, Points):
        for p in panel.points:
            ax.scatter(p.x, p.y, label=p.label, s=40, clip_on=False)  # a point on the axis' limit sits on it, whole
        ax.set_xlabel(panel.x.text)
        ax.set_ylabel(panel.y.text)
        _limits(ax.set_xlim, panel.x)
        _limits(ax.set_ylim, panel.y)
        if panel.points:
            ax.legend(fontsize=TICK_FONT, loc="lower right")
    else:
        xs = np.arange(len(panel.categories))
        n = max(1, len(panel.series))
        width = GROUP_WIDTH / n
        bar, ticks, label_axis = (ax.barh, ax.set_yticks, ax.set_xlabel) if panel.horizontal else (ax.bar, ax.set_xticks, ax.set_ylabel)
        for i, s in enumerate(panel.series):
            bar(xs + (i - (n - 1) / 2) * width, list(s.values), width, label=s.label)
        ticks(xs, list(panel.categories), fontsize=TICK_FONT, rotation=panel.rotation)
        label_axis(panel.value.text)
        _limits(ax.set_xlim if panel.horizontal else ax.set_ylim, panel.value)
        if panel.horizontal:
            ax.invert_yaxis()
        if len(panel.series) > 1:
            ax.legend(fontsize=TICK_FONT)


def render_png(figure: Figure) -> bytes:
    """The PNG of ``figure``, drawn off screen (matplotlib's Agg canvas; no pyplot state)."""
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(figure.width, figure.height))
    axes = fig.subplots(1, max(1, len(figure.panels)), squeeze=False)[0]
    for ax, panel in zip(axes, figure.panels):
        _draw(ax, panel)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=figure.dpi)
    return buf.getvalue()


PathArg = str | os.PathLike[str] | None


def write_report(report: Report, *, json: PathArg = None, markdown: PathArg = None, png: PathArg = None,
                 inputs: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """Write the renderings asked for (None: not asked) and return their paths, in that order.

    The names are checked first (:func:`.fileio.check_outputs`: none named twice, none an input, each writable); then
    every rendering is made in memory, and only then is each written atomically, so a failed rendering writes nothing.
    Raises :class:`.errors.OutputPathError` for a bad name, or for a plot asked of a report that has none.
    """
    check_outputs(json, markdown, png, inputs=inputs)
    rendered: list[tuple[Path, bytes]] = []
    if json is not None:
        rendered.append((Path(json), json_text(report.as_dict()).encode("utf-8")))
    if markdown is not None:
        rendered.append((Path(markdown), _md_controls_shown(report.as_markdown()).encode("utf-8")))
    if png is not None:
        figure = report.as_figure()
        if figure is None:
            raise OutputPathError(f"a {type(report).__name__} has no plot to write to {png}")
        rendered.append((Path(png), render_png(figure)))
    for path, data in rendered:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return [path for path, _ in rendered]
