"""How every benchmark prints its table to the terminal (the .md/.json results are each script's own)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table


def print_rows(title: str, head: Sequence[str], rows: Sequence[Sequence[str]], *, width: int = 200) -> None:
    """One rich table; `width` is fixed so the columns stay readable in CI logs."""
    t = Table(title=title)
    for h in head:
        t.add_column(h)
    for r in rows:
        t.add_row(*r)
    Console(width=width).print(t)
