"""A problem for one op: its differentiable inputs, its options and a ``grad_out``, with what
the references and the tolerances need to judge a result for it."""
from typing import Any, Dict

import numpy as np

from .._op_table import OPS as TABLE
from .._op_table import ops_of
from . import tolerances
from .references import REFERENCES, WINDOW_OPTIONS

# The ops, from npool's op table (plain data; the references and tolerances are this package's
# own): the local pools with their spatial axes, the global pools.
OPS = tuple(TABLE)
LOCAL = {op.name: op.nd for op in ops_of("local")}
GLOBAL = tuple(op.name for op in ops_of("global"))


def check_op_name(op):
    if op not in REFERENCES:
        raise ValueError(f"unknown op {op!r}; npool.testing knows {', '.join(OPS)}")
    return op


def as_results(value):
    """A forward's or backward's result as a tuple of arrays (one array -> a 1-tuple)."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _describe(name, a):
    a = np.asarray(a)
    if a.dtype == bool:
        return f"{name}={a.tolist()!r}"
    layout = ("C-contiguous" if a.flags.c_contiguous else "strided "
              f"{tuple(s // a.itemsize for s in a.strides)}")
    text = f"{name}: {a.dtype} {a.shape} {layout}"
    if a.size and a.size <= 64:
        text += "\n    " + np.array2string(a, precision=9, max_line_width=96,
                                          threshold=64).replace("\n", "\n    ")
    elif a.size:
        finite = a[np.isfinite(a)] if a.dtype.kind == "f" else a
        if finite.size:
            text += f", values in [{finite.min():.6g}, {finite.max():.6g}]"
    return text


class Problem:
    """One problem for ``op``: its inputs, options and upstream gradient.

    ``problem.args`` are the positional arguments, so ``forward(*problem.args,
    **problem.options)`` and ``backward(problem.grad_out, *problem.args, **problem.options)``
    call an op with npool's signature.

    Parameters
    ----------
    op : str
        One of ``OPS``.
    inputs : dict
        Name -> array: the op's differentiable inputs in signature order.
    options : dict
        The other keyword arguments: window arguments, k, beta, alpha, mask, ...
    grad_out : array, optional
        An upstream gradient of the output's shape (for backward checks).

    Examples
    --------
    >>> x = np.ones((1, 2, 4))
    >>> problem = npool.testing.Problem("global_lse_pool", {"x": x}, {"beta": 2.0})
    >>> float(npool.global_lse_pool_forward(*problem.args, **problem.options)[0, 0])
    1.0
    """

    def __init__(self, op: str, inputs: Dict[str, Any], options: Dict[str, Any],
                 grad_out: Any = None) -> None:
        self.op = check_op_name(op)
        self.inputs = dict(inputs)
        self.options = dict(options)
        self.grad_out = grad_out

    @property
    def args(self):
        return tuple(self.inputs.values())

    @property
    def dtype(self):
        return np.asarray(next(iter(self.inputs.values()))).dtype

    def reference(self, which="forward"):
        """The float64 reference results for this problem, as a tuple."""
        forward, backward = REFERENCES[self.op]
        if which == "forward":
            return as_results(forward(*self.args, **self.options))
        if which == "backward":
            return as_results(backward(self.grad_out, *self.args, **self.options))
        raise ValueError(f"which must be 'forward' or 'backward', got {which!r}")

    def error_scales(self, which="forward"):
        """Per result element, the scale of its rounding error (see npool.testing.tolerances)."""
        forward, grads = self._scales(which == "backward")
        return (forward,) if which == "forward" else grads

    def _scales(self, backward):
        op, o = self.op, self.options
        g = self.grad_out if backward else None
        if op in LOCAL:
            lam = self.inputs.get("lam", 1.0)
            window = {key: o[key] for key in WINDOW_OPTIONS if key in o}
            result = tolerances.local_scales(self.inputs["x"], lam, LOCAL[op], grad_out=g,
                                             **window)
            if backward and "soft" in op:
                return result[0], result[1][:1]
            return result if backward else (result, None)
        if op in GLOBAL:
            result = tolerances.global_scales(op, self.inputs["x"], o, g,
                                              p=self.inputs.get("p"))
            return result if backward else (result, None)
        mask = o.get("mask")
        mask = None if mask is None else np.asarray(mask, bool)
        i = self.inputs
        if op == "netvlad_pool":
            result = tolerances.vlad_scales(i["x"], i["assign"], i["centers"], mask, g)
        elif op == "netrvlad_pool":
            result = tolerances.vlad_scales(i["x"], i["assign"], None, mask, g)
            if backward:
                result = (result[0], result[1][:2])
        elif op == "netfv_pool":
            result = tolerances.fv_scales(i["x"], i["assign"], i["mu"], i["covar_weights"],
                                          mask, g)
        elif op == "soft_dbow_pool":
            result = tolerances.dbow_scales(i["assign"], mask, g)
        else:
            result = tolerances.gating_scales(i["x"], i["weights"], i["biases"], g)
        return result if backward else (result, None)

    def __repr__(self):
        lines = [f"Problem({self.op!r})"]
        lines += ["  " + _describe(name, a) for name, a in self.inputs.items()]
        for key, value in self.options.items():
            lines.append("  " + (_describe(key, value) if isinstance(value, np.ndarray)
                                 else f"{key}={value!r}"))
        if self.grad_out is not None:
            lines.append("  " + _describe("grad_out", self.grad_out))
        return "\n".join(lines)
