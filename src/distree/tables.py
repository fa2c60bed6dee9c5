"""Tables of results as aligned text (what commands print) or Markdown (what reports,
README.md and docs/results.md hold): one renderer, so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Sequence


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> list[str]:
    """Lines of a table. A column holding words (any cell starting with a letter, as the
    first column's names do) is left-aligned, a column of values right-aligned; text pads
    each column to its widest cell."""
    columns = list(zip(headers, *rows)) if rows else [(h,) for h in headers]
    left = [i == 0 or any(c[:1].isalpha() for c in col[1:]) for i, col in enumerate(columns)]
    if markdown:
        return [
            "| " + " | ".join(headers) + " |",
            "|" + "".join("---|" if lft else "---:|" for lft in left),
            *("| " + " | ".join(row) + " |" for row in rows),
        ]
    widths = [max(len(c) for c in col) for col in columns]
    return [
        "  ".join(c.ljust(w) if lft else c.rjust(w) for c, w, lft in zip(row, widths, left)).rstrip()
        for row in [headers, *rows]
    ]
