"""One table renderer: the text and HTML of :class:`featvis.LayerTable` and
:class:`featvis.ComparisonTable` (and anything else featvis shows as rows of cells)."""

from __future__ import annotations

import html
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

__all__ = ["Table"]


@dataclass(frozen=True)
class Table:
    """Rows of string cells under named columns, with notes after them.

    Attributes
    ----------
    columns : tuple of str
    rows : sequence of tuple of str
        One tuple per row, in ``columns`` order.
    right : collection of int
        Indices of the columns aligned right in text (numbers).
    css : str
        The HTML ``class`` of the ``<table>``.
    row_classes : sequence of str, optional
        An HTML ``class`` per row (``"ok"``, ``"failed"``...).
    notes : sequence of str
        Lines after the table: a blank line then the lines in text, one ``<p>`` each in HTML
        (the table and its notes then sit in a ``<div>`` whose class is ``css`` without its
        ``-table`` suffix).

    Examples
    --------
    >>> from featvis._table import Table
    >>> print(Table(("name", "size"), [("conv1", "64"), ("fc", "1000")], right={1}).text())
    name   size
    -----  ----
    conv1    64
    fc     1000
    """

    columns: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]
    right: Collection[int] = ()
    css: str = "featvis-table"
    row_classes: Sequence[str] | None = None
    notes: Sequence[str] = field(default_factory=tuple)

    def text(self) -> str:
        """Columns padded to their widest cell, a rule under the header, then the notes."""
        table = [self.columns, *self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(self.columns))]
        lines = []
        for n, row in enumerate(table):
            cells = [
                cell.rjust(w) if i in self.right else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths))
            ]
            lines.append("  ".join(cells).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        if self.notes:
            lines += ["", *self.notes]
        return "\n".join(lines)

    def html(self) -> str:
        """The table as escaped HTML, for Jupyter and reports."""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        classes = self.row_classes or [""] * len(self.rows)
        body = "".join(
            (f'<tr class="{html.escape(cls)}">' if cls else "<tr>")
            + "".join(f"<td>{html.escape(cell)}</td>" for cell in row)
            + "</tr>"
            for row, cls in zip(self.rows, classes)
        )
        table = (
            f'<table class="{html.escape(self.css)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>"
        )
        if not self.notes:
            return table
        notes = "".join(f"<p>{html.escape(line)}</p>" for line in self.notes)
        wrapper = self.css.removesuffix("-table")
        return f'<div class="{html.escape(wrapper)}">{table}{notes}</div>'
