"""CSV cells that spreadsheets will not run as formulas ("CSV injection", OWASP).

A text cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read as a
formula by Excel, LibreOffice and Google Sheets (``=HYPERLINK(...)``, ``@SUM(...)``, DDE calls),
so a hostile case id, slide name, label name or error message could run in the reader's
spreadsheet. :func:`csv_text` prefixes such a cell with a single quote, as OWASP recommends; a
cell that already begins with a quote gets one more, so :func:`csv_untext` gives back exactly
the original text. Line breaks inside a cell become spaces (Python's csv writer leaves a lone CR
unquoted, which breaks the row for every reader); other control characters and bidirectional
controls (a right-to-left override reorders the cell on screen) are written as ``\\xNN`` /
``\\uNNNN`` escapes (:func:`medseg.errors.printable`). Only text is touched: numbers (negative ones
included) are written as numbers.
"""

from __future__ import annotations

from typing import Any

from medseg.errors import printable

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would read as a formula."""
    if not isinstance(value, str) or not value:
        return value
    if value[0] in FORMULA_START or value[0] == "'":
        value = "'" + value
    value = value.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    return "\t".join(printable(part) for part in value.split("\t"))  # a tab is plain CSV text


def csv_untext(value: str) -> str:
    """Inverse of :func:`csv_text` for a cell read back from a medseg CSV (line breaks stay spaces)."""
    return value[1:] if value.startswith("'") else value
