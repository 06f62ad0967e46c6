"""Caffe's solvers on the net's device.

- :mod:`~rll_repro.solver.base`: ``Solver`` (Step, ApplyUpdate, ClipGradients, test nets, the loss
  window, finiteness checks without host reads inside a step).
- :mod:`~rll_repro.solver.rules`: the update rules (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam).
- :mod:`~rll_repro.solver.snapshot`: snapshots and resume (device-independent, safe side file).
"""
from __future__ import annotations

from rll_repro.errors import TrainingError
from rll_repro.solver.base import SOLVER_TYPE_NAMES, Solver, read_solver_param, solver_type_of
from rll_repro.solver.rules import (SOLVERS, AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,
                                    RMSPropSolver, SGDSolver)
from rll_repro.solver.snapshot import SIDE_SUFFIX


def get_solver(solver_prototxt, net=None, device=None, **kwargs) -> Solver:
    """pycaffe's ``caffe.get_solver``: the solver class named by the prototxt's ``type``, its train net
    built on ``device`` (default: the solver's solver_mode/device_id, else cuda when available)."""
    param, _ = read_solver_param(solver_prototxt)
    name = solver_type_of(param)
    cls = SOLVERS.get(name)
    if cls is None:
        raise TrainingError(f"solver: unknown type {name!r} (expected one of {', '.join(SOLVERS)})")
    return cls(solver_prototxt, net, device=device, **kwargs)


__all__ = ["Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
           "AdamSolver", "get_solver", "SOLVERS", "SOLVER_TYPE_NAMES", "SIDE_SUFFIX", "solver_type_of"]
