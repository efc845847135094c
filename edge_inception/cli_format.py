"""Help text in Click's plain form: ``Usage: edge-inception predict [OPTIONS] ARTIFACT IMAGES...`` and ``--top-k INTEGER``.

Typer 0.2x prints its internal type descriptors in plain help (``{artifact}``, ``<list[Path]>``, ``<int range>``); a
reader should see argument names and Click's metavars instead. Only the help layout changes: parsing, errors and exit
codes stay Typer's.
"""

from __future__ import annotations

import re
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

# Typer's descriptor -> Click's metavar; a choice list becomes [a|b|c]; a list argument's type is dropped (the "..." says it)
_TYPES = {"path": "PATH", "int range": "INTEGER", "float range": "FLOAT", "int": "INTEGER", "float": "FLOAT", "str": "TEXT"}
_DESCRIPTOR = re.compile(r" ?<(path|int range|float range|int|float|str|list\[[^\]<>]+\]|[A-Za-z0-9_.-]+(?:\|[A-Za-z0-9_.-]+)+)>")


def _metavar(match: re.Match[str]) -> str:
    word = match.group(1)
    if word.startswith("list["):
        return ""
    if "|" in word:
        return f" [{word}]"
    return f" {_TYPES[word]}"


def plain(text: str) -> str:
    """Typer's descriptors in ``text`` replaced by Click's metavars."""
    return _DESCRIPTOR.sub(_metavar, text)


class PlainCommand(TyperCommand):
    """A command whose usage line and parameter list use Click's plain metavars."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = (param.metavar or param.name or "").upper()
                name = name if param.required else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        sections: dict[str, list[tuple[str, str]]] = {"Arguments": [], "Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                name = (param.metavar or param.name or "").upper() + ("..." if param.nargs != 1 else "")
                sections["Arguments"].append((name, record[1]))
            else:
                sections["Options"].append((plain(record[0]), record[1]))
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class PlainGroup(TyperGroup):
    """The command group: its own help in plain form too."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        inner = ctx.make_formatter()
        super().format_options(ctx, inner)
        formatter.write_paragraph()
        formatter.write(plain(inner.getvalue()))


class PlainTyper(typer.Typer):
    """``typer.Typer`` whose commands default to :class:`PlainCommand`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", PlainGroup)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", PlainCommand)
        return super().command(*args, **kwargs)
