"""Names and labels that come from files (a target preset's ``name``, a model's file name, a manifest's fields, class
names), checked before they reach a path, a shell script or a terminal.

A *name* (targets, model files) may become part of a file or folder name and a word of ``build.sh``: it is held to
``[A-Za-z0-9][A-Za-z0-9._-]{0,63}`` without ``..``, so it can neither leave its folder, start an option (``-rf``),
nor carry a shell metacharacter. A *label* (a class name such as ``tench, Tinca tinca``) is only ever printed or
written one per line: any printable text up to :data:`MAX_LABEL_CHARS` characters, but no control or format
characters (a newline would split ``labels.txt``; an escape sequence or a bidirectional override would rewrite the
terminal).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from .errors import EdgeInceptionError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_NAME_RE = re.compile(NAME_PATTERN)
MAX_LABEL_CHARS = 256
MAX_TEXT_CHARS = 1024  # a free-text field (a preset's description)
# Unicode categories refused in labels and descriptions: controls, format characters (bidirectional overrides,
# zero-width joiners), surrogates, private use, unassigned, line and paragraph separators.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def is_number(text: str) -> bool:
    """True for a non-empty run of ASCII digits 0-9. ``str.isdigit`` also takes '²' (which ``int`` refuses) and '٣' or
    '８' (which ``int`` reads as 3 and 8): a port, a version, a camera index or a class folder from the user is ASCII."""
    return text.isascii() and text.isdigit()


class UnsafeNameError(EdgeInceptionError):
    """A name or label from a file that could escape its folder, its script or the terminal."""


def check_name(value: object, what: str) -> str:
    """``value`` if it is a safe name (see the module's docstring), else :class:`UnsafeNameError` naming ``what``."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or ".." in value:
        shown = repr(value)[:80] if isinstance(value, str) else type(value).__name__
        raise UnsafeNameError(f"{what} {shown} is not a safe name: letters, digits, '.', '_' and '-' only, starting with a letter or "
                              "digit, at most 64 characters, no '..'")
    return value


def check_text(value: object, what: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Printable text of at most ``max_chars`` characters (no control or format characters), else :class:`UnsafeNameError`."""
    if not isinstance(value, str):
        raise UnsafeNameError(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise UnsafeNameError(f"{what} is {len(value)} characters long, more than {max_chars}")
    bad = next((c for c in value if unicodedata.category(c) in _UNPRINTABLE), None)
    if bad is not None:
        raise UnsafeNameError(f"{what} holds the control character U+{ord(bad):04X} at position {value.index(bad)}")
    return value


def check_labels(values: object, what: str, count: int | None = None) -> list[str]:
    """A list of ``count`` (if given) non-empty printable labels, else :class:`UnsafeNameError` naming the first bad one."""
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise UnsafeNameError(f"{what} must be a list of strings, got {type(values).__name__}")
    if count is not None and len(values) != count:
        raise UnsafeNameError(f"{what} has {len(values)} entries, expected {count}")
    for i, v in enumerate(values):
        if not check_text(v, f"{what}[{i}]", MAX_LABEL_CHARS).strip():
            raise UnsafeNameError(f"{what}[{i}] is empty")
    return list(values)


def printable(text: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """``text`` safe to print: control and format characters shown as escapes (``\\x1b``), cut at ``max_chars``."""
    shown = "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in _UNPRINTABLE else c for c in text[:max_chars])
    return shown + ("..." if len(text) > max_chars else "")
