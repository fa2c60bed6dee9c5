"""Tables of results as aligned text (what commands print) or Markdown (what reports and
the README hold): one renderer, so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Sequence


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> list[str]:
    """Lines of a table whose first column is a name (left-aligned) and the others values
    (right-aligned). Text pads the name to 24 characters and each value to 8."""
    if markdown:
        return [
            "| " + " | ".join(headers) + " |",
            "|---|" + "---:|" * (len(headers) - 1),
            *("| " + " | ".join(row) + " |" for row in rows),
        ]
    return [" ".join([f"{row[0]:<24}", *(f"{c:>8}" for c in row[1:])]) for row in [headers, *rows]]
