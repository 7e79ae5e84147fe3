"""Text that reaches a person or a spreadsheet: names and messages made safe to print and to open."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable


def printable(text: str) -> str:
    """`text` with control characters escaped, for human-readable output: a newline in a file name cannot
    forge a result line, and a terminal escape sequence is shown, not obeyed."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def csv_cell(text: str) -> str:
    """A CSV cell a spreadsheet will not run as a formula: a leading = + - @ (or tab / carriage return) gets
    a quote in front, as OWASP advises. Numbers are written by the caller, never through this."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class Numeral(str):
    """A number formatted as text ("-4.780612"): written to CSV as it is, as numbers are, never neutralised as if
    it were a formula (a negative figure starts with "-")."""


def csv_row(cells: Iterable) -> str:
    """One CSV line (no line end), the one writer of every CSV cifarkit writes: each text cell through
    `csv_cell`, numbers (and Numerals) as they are, None as an empty cell."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(
        ["" if c is None else c if isinstance(c, Numeral) else csv_cell(c) if isinstance(c, str) else c
         for c in cells])
    return buffer.getvalue()


def csv_text(rows: Iterable[Iterable]) -> str:
    """Whole CSV text, each row through `csv_row`."""
    return "".join(csv_row(row) + "\n" for row in rows)
