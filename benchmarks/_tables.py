"""Markdown tables as the benchmark scripts print them (pasted into RESULTS.md as they are)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """``| a | b |`` lines: the header, the ``| --- |`` rule, then one line per row (cells formatted by str)."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
