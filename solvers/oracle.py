"""Exact-posterior references ("oracles") for priors that have a closed-form posterior.

`oracle_mean` returns the exact posterior mean E[x | y] (the MMSE estimate), `oracle_sample` one exact
posterior sample; both exist only for priors that implement `posterior_mean` / `posterior_sample`
(the exact Gaussian and Gaussian-mixture priors, priors/gaussian.py and priors/gmm.py). They make no
network evaluation (NFE 0). They are references, not solvers: they are not in the solver registry, and
the tables show them in italics and never rank them.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from operators.base import Operator
from solvers.base import UnsupportedTask

ORACLE_METHODS = {"oracle_mean": "posterior_mean", "oracle_sample": "posterior_sample"}


class Oracle:
    """The exact posterior mean / an exact posterior sample (no NFE)."""

    def __init__(self, name: str, prior: torch.nn.Module) -> None:
        self.name, self.prior = name, prior
        self.method = ORACLE_METHODS[name]
        self.params: dict[str, Any] = {}

    def supports(self, A: Operator) -> bool:
        return callable(getattr(self.prior, self.method, None))

    def describe(self) -> dict:
        return {"solver": self.name, "params": {}}

    def external_models(self) -> dict[str, str]:
        return {}

    def solve(self, y: torch.Tensor, A: Operator, generator: Sequence[torch.Generator]) -> torch.Tensor:
        if not self.supports(A):
            raise UnsupportedTask(f"prior {getattr(self.prior, 'name', '?')!r} has no exact {self.method}")
        self.prior.reset_counters()
        out = []
        with torch.no_grad():  # one image at a time: a batched iterative solve (CG) stops when the
            for i in range(y.shape[0]):  # slowest image converges, which would couple the images
                A_i = A.select([i])
                if self.name == "oracle_mean":
                    out.append(self.prior.posterior_mean(y[i:i + 1], A_i))
                else:
                    out.append(self.prior.posterior_sample(y[i:i + 1], A_i, [generator[i]]))
        data_range = getattr(self.prior, "data_range", (-1.0, 1.0))  # None: unbounded (as Solver.solve)
        return torch.cat(out) if data_range is None else torch.cat(out).clamp(*data_range)
