"""A small sparse mixed-integer program builder on HiGHS (through `scipy.optimize.milp`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Solution:
    """Solver outcome: variable values (None when no feasible point was found) and statistics."""

    status: str  # optimal | time_limit | infeasible | error
    values: np.ndarray | None
    objective: float | None
    mip_gap: float | None
    seconds: float


class Model:
    """Columns and rows accumulated in plain lists, then solved once. Not shared between threads."""

    def __init__(self) -> None:
        self._cost: list[float] = []
        self._lb: list[float] = []
        self._ub: list[float] = []
        self._int: list[int] = []
        self._rows: list[int] = []
        self._cols: list[int] = []
        self._vals: list[float] = []
        self._rlo: list[float] = []
        self._rhi: list[float] = []

    @property
    def num_vars(self) -> int:
        return len(self._cost)

    @property
    def num_rows(self) -> int:
        return len(self._rlo)

    def var(self, cost: float = 0.0, lb: float = 0.0, ub: float = np.inf, integer: bool = False) -> int:
        """Add a column and return its index."""
        self._cost.append(cost)
        self._lb.append(lb)
        self._ub.append(ub)
        self._int.append(1 if integer else 0)
        return len(self._cost) - 1

    def add_cost(self, var: int, cost: float) -> None:
        """Add to a column's objective coefficient."""
        self._cost[var] += cost

    def row(self, terms: list[tuple[int, float]], lo: float = -np.inf, hi: float = np.inf) -> int:
        """Add `lo <= sum(coef * var) <= hi` and return its index."""
        r = len(self._rlo)
        for col, coef in terms:
            self._rows.append(r)
            self._cols.append(col)
            self._vals.append(coef)
        self._rlo.append(lo)
        self._rhi.append(hi)
        return r

    def extend_row(self, row: int, terms: list[tuple[int, float]]) -> None:
        """Add terms to an existing row."""
        for col, coef in terms:
            self._rows.append(row)
            self._cols.append(col)
            self._vals.append(coef)

    def solve(self, *, mip_rel_gap: float, time_limit_s: float) -> Solution:
        """Minimise the objective; HiGHS is deterministic for the same model."""
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import csr_array

        start = time.perf_counter()
        n = self.num_vars
        if n == 0:
            return Solution("optimal", np.zeros(0), 0.0, 0.0, 0.0)
        constraints = []
        if self._rlo:
            a = csr_array((self._vals, (self._rows, self._cols)), shape=(self.num_rows, n))
            constraints.append(LinearConstraint(a, np.array(self._rlo), np.array(self._rhi)))
        res = milp(
            c=np.array(self._cost),
            integrality=np.array(self._int),
            bounds=Bounds(np.array(self._lb), np.array(self._ub)),
            constraints=constraints,
            options={"mip_rel_gap": mip_rel_gap, "time_limit": time_limit_s, "presolve": True},
        )
        seconds = time.perf_counter() - start
        gap = getattr(res, "mip_gap", None)
        if res.status == 0:
            return Solution("optimal", res.x, res.fun, gap, seconds)
        if res.status == 1 and res.x is not None:
            return Solution("time_limit", res.x, res.fun, gap, seconds)
        if res.status == 2:
            return Solution("infeasible", None, None, None, seconds)
        return Solution("error" if res.status != 1 else "time_limit", None, None, None, seconds)
