"""``assert_close`` and ``check_op``: judging a user's results against the references."""
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .._op_table import OPS as TABLE
from . import tolerances
from ._problems import LOCAL, Problem, as_results, check_op_name
from .references import REFERENCES
from .references import WINDOW_OPTIONS, f64, maps, pool_windows, window_cells

FACTOR = 64  # bound: FACTOR * (eps(dtype) * error scale + the dtype's smallest subnormal)
# The ops that select cells (they return their indices) and the set pools that take a mask.
SELECTIONS = tuple(name for name, op in TABLE.items() if "indices" in op.outputs)
SET_POOLS = tuple(name for name, op in TABLE.items() if "mask" in op.other_arrays)


def require_hypothesis():
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        raise ImportError("npool.testing.problems and check_op need hypothesis: pip install "
                          "hypothesis (or npool[testing])") from None


def _float_dtype(actual, problem, dtype):
    if dtype is not None:
        return tolerances.as_dtype(dtype)
    for a in actual:
        if np.asarray(a).dtype.kind not in "biu":
            return np.asarray(a).dtype
    return problem.dtype


def _index(flat, shape):
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()


def assert_close(actual: Any, problem: Problem, which: str = "forward", *,
                 dtype: Any = None) -> None:
    """Assert that ``actual`` matches the float64 reference for ``problem``.

    Each element may differ by ``64 * (eps(dtype) * scale + the dtype's smallest
    subnormal)``, where eps is the unit roundoff of ``dtype`` and ``scale`` the element's error
    scale from ``npool.testing.tolerances``, which follows the problem's conditioning (window
    magnitudes and spreads, temperatures, norms). NaN must meet NaN and infinities must be
    equal; a reference value beyond the dtype's range must come out as it rounds to there
    (+-inf). Integer results (indices) must be equal.

    Parameters
    ----------
    actual : array or tuple of arrays
        A forward's output, or a backward's gradients in the op's order; NumPy arrays or
        anything ``numpy.asarray`` takes.
    problem : Problem
        The inputs and options ``actual`` was computed from.
    which : {"forward", "backward"}, default "forward"
    dtype : numpy dtype, optional
        The precision to judge by; default the results' float dtype.

    Raises
    ------
    AssertionError
        Naming the result, the element, both values, the difference, the bound and the
        problem.

    Examples
    --------
    >>> x = np.array([[[1.0, 2.0, 3.0, 4.0]]], np.float32)
    >>> problem = npool.testing.Problem("global_avg_pool", {"x": x}, {})
    >>> npool.testing.assert_close(np.array([[2.5]], np.float32), problem)
    >>> npool.testing.assert_close(np.array([[2.6]], np.float32), problem)
    Traceback (most recent call last):
    ...
    AssertionError: global_avg_pool forward: output[0, 0] is ...
    """
    if which not in ("forward", "backward"):
        raise ValueError(f"which must be 'forward' or 'backward', got {which!r}")
    actual = tuple(np.asarray(a) for a in as_results(actual))
    expected = problem.reference(which)
    if which == "forward" and len(actual) > len(expected):
        actual = actual[:len(expected)]
    if len(actual) != len(expected):
        raise AssertionError(f"{problem.op} {which}: expected {len(expected)} result(s), got "
                             f"{len(actual)}\n{problem!r}")
    dtype = _float_dtype(actual, problem, dtype)
    info = tolerances.float_info(dtype)
    names = ("output",) if which == "forward" else tuple(f"grad_{n}" for n in problem.inputs)
    for name, got, want, scale in zip(names, actual, expected, problem.error_scales(which)):
        want = np.asarray(want)
        if got.shape != want.shape:
            raise AssertionError(f"{problem.op} {which}: {name} has shape {got.shape}, the "
                                 f"reference {want.shape}\n{problem!r}")
        if want.dtype.kind in "iu":
            bad = got != want
            bound = np.zeros(want.shape)
        else:
            got64, want64 = f64(got), f64(want)
            bound = FACTOR * (info.eps * np.broadcast_to(f64(scale), want.shape)
                              + float(info.smallest_subnormal))
            with np.errstate(invalid="ignore", over="ignore"):
                error = np.abs(got64 - want64)
                rounded = f64(want64.astype(dtype))  # beyond the dtype's range: +-inf
                ok = ((error <= bound) | (got64 == want64) | (got64 == rounded)
                      | (np.isnan(got64) & np.isnan(want64)))
            bad = ~ok
        if bad.any():
            worst = np.flatnonzero(bad)[0]
            at = _index(worst, want.shape)
            g, w = got.reshape(-1)[worst], want.reshape(-1)[worst]
            raise AssertionError(
                f"{problem.op} {which}: {name}{list(at)} is {g!r}, the reference {w!r} "
                f"(off by {abs(f64(g) - f64(w)):.3g}, allowed {bound.reshape(-1)[worst]:.3g}; "
                f"{int(bad.sum())} of {bad.size} elements off)\n{problem!r}")


def _call(function, what, problem, args, options, to_array):
    try:
        with np.errstate(all="ignore"):  # a kernel's overflow warnings are not findings
            result = function(*args, **options)
    except Exception as error:  # the user's kernel failing on a problem is a finding
        raise AssertionError(f"{problem.op} {what} raised {type(error).__name__}: {error}\n"
                             f"{problem!r}") from error
    return tuple(to_array(r) for r in as_results(result))


def _converted(problem, from_array):
    convert = (lambda a: a) if from_array is None else from_array
    args = tuple(convert(a) if isinstance(a, np.ndarray) else a for a in problem.args)
    options = {key: convert(v) if isinstance(v, np.ndarray) else v
               for key, v in problem.options.items()}
    return args, options


def _contiguous(problem):
    inputs = {name: np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a
              for name, a in problem.inputs.items()}
    return Problem(problem.op, inputs, problem.options, np.ascontiguousarray(problem.grad_out))


def _check_invariants(problem, y):
    """Relations any correct result satisfies, checked on the user's output ``y``."""
    op, o = problem.op, problem.options
    x = f64(problem.inputs.get("x", 0.0))
    tolerance = FACTOR * tolerances.float_info(problem.dtype).eps * problem.error_scales(
        "forward")[0]
    with np.errstate(invalid="ignore"):
        if op in LOCAL:
            nd = LOCAL[op]
            window_options = {key: o[key] for key in WINDOW_OPTIONS if key in o}
            for out_index, window in pool_windows(x.shape[-nd:], **window_options)[1]:
                cells = window_cells(x, window, nd)
                at = (Ellipsis,) + out_index
                low, high = cells.min(axis=-1), cells.max(axis=-1)
                outside = (y[at] < low - tolerance[at]) | (y[at] > high + tolerance[at])
                if outside.any():
                    raise AssertionError(f"{op}: output{list(out_index)} lies outside its "
                                         f"window's [min, max]\n{problem!r}")
        elif op == "global_lse_pool" and maps(x).shape[2]:
            m = maps(x)
            y2 = f64(y).reshape(m.shape[:2])
            t = tolerance.reshape(m.shape[:2])
            low, high = (m.mean(axis=2), m.max(axis=2)) if o.get("beta", 1.0) >= 0 else \
                (m.min(axis=2), m.mean(axis=2))
            if ((y2 < low - t) | (y2 > high + t)).any():
                raise AssertionError(f"{op}: output outside [mean, max] (beta >= 0) or "
                                     f"[min, mean] (beta < 0)\n{problem!r}")
        elif op == "global_gem_pool" and maps(x).shape[2]:
            z = np.maximum(maps(x), o.get("eps", 1e-6))
            y2 = f64(y).reshape(z.shape[:2])
            t = tolerance.reshape(z.shape[:2])
            if ((y2 < z.min(axis=2) - t) | (y2 > z.max(axis=2) + t)).any():
                raise AssertionError(f"{op}: output outside [min, max] of max(x, eps)\n"
                                     f"{problem!r}")
        elif op in SELECTIONS and maps(x).shape[2]:
            m = maps(x)
            y2 = f64(y).reshape(m.shape[:2])
            alpha = abs(o.get("alpha", 1.0)) if op == "weldon_pool" else 0.0
            t = tolerance.reshape(m.shape[:2]) * (1 + alpha)
            reach = np.abs(m).max(axis=2) * (1 + alpha)
            if (np.abs(y2) > reach + t).any():
                raise AssertionError(f"{op}: output beyond (1 + |alpha|) max |x|\n{problem!r}")


def _check_mask(problem, forward, to_array, from_array):
    """Changing the samples a mask leaves out must change nothing."""
    mask = problem.options.get("mask")
    if mask is None or np.all(mask):
        return
    out = ~np.asarray(mask, bool)
    inputs = {}
    for name, a in problem.inputs.items():
        a = np.array(a)
        if a.ndim == 3 and a.shape[:2] == out.shape:
            a[out] = (7.0 if name == "x" else 1.0)  # garbage where the mask is False
        inputs[name] = a
    changed = Problem(problem.op, inputs, problem.options, problem.grad_out)
    args, options = _converted(changed, from_array)
    y_changed = _call(forward, "forward", changed, args, options, to_array)
    try:
        assert_close(y_changed, changed)
    except AssertionError as error:
        raise AssertionError(f"{problem.op}: samples the mask leaves out changed the output "
                             f"(they were set to other values)\n{error}") from None


def _smooth(problem):
    """Whether the op is differentiable at this problem: not a selection (its derivative
    jumps at ties), and for the set pools no normalised vector near l2n's floor (the output is
    a direction there, undefined at 0)."""
    op, i = problem.op, problem.inputs
    if op in SELECTIONS:
        return False
    if op == "global_gem_pool":  # the clamp max(x, eps) has a kink at eps
        x = f64(i["x"])
        h = 1e-7 * max(1.0, float(np.max(np.abs(x), initial=0)))
        return bool(np.all(np.abs(x - problem.options.get("eps", 1e-6)) > 100 * h))
    mask = problem.options.get("mask")
    if op in ("netvlad_pool", "netrvlad_pool"):
        _, norms = REFERENCES[op][0](*problem.args, **problem.options, return_norms=True)
        return bool(np.all(norms > 1e-3))
    if op == "netfv_pool":
        return bool(np.all(np.abs(tolerances.fv_scales(i["x"], i["assign"], i["mu"],
                                                        i["covar_weights"], mask)) > 0)
                    and _fv_norms(problem) > 1e-3)
    if op == "soft_dbow_pool":
        bow = REFERENCES[op][0](i["assign"], mask)
        return bool(np.all(np.abs(bow).sum(axis=1) > 0) or bow.size == 0) and bool(
            np.all(_masked_sums(i["assign"], mask) > 1e-3))
    return True


def _masked_sums(assign, mask):
    a = f64(assign) if mask is None else f64(assign) * np.asarray(mask, bool)[..., None]
    return np.sqrt(np.sum(a.sum(axis=1) ** 2, axis=1))


def _fv_norms(problem):
    """The smallest norm NetFV normalises (its F1 columns, F1 and F2), from the reference."""
    from .references import _fv_parts, l2n
    *_, f1, f2 = _fv_parts(*problem.args, problem.options.get("mask"))
    if f1.size == 0:
        return np.inf
    b, d, k = f1.shape
    columns = np.sqrt(np.sum(f1 * f1, axis=1))
    flat = l2n(f1, axis=1).reshape(b, d * k)
    return float(min(columns.min(), np.sqrt(np.sum(flat * flat, axis=1)).min(),
                     np.sqrt(np.sum(f2 * f2, axis=(1, 2))).min()))


def _directional_difference(problem, forward, backward, to_array, from_array, grads):
    """Central differences of the user's forward along a random direction, against the user's
    backward (float64 problems of smooth ops only)."""
    if problem.dtype != np.float64 or not _smooth(problem):
        return
    rng = np.random.default_rng(0)
    directions = {name: rng.standard_normal(np.shape(a)) for name, a in problem.inputs.items()}
    h = {name: 1e-7 * max(1.0, float(np.max(np.abs(a), initial=0)))
         for name, a in problem.inputs.items()}
    g = f64(problem.grad_out)

    def value(name, sign):
        inputs = dict(problem.inputs)
        a = inputs[name]
        inputs[name] = (np.asarray(a, np.float64) + sign * h[name] * directions[name]
                        if isinstance(a, np.ndarray)
                        else a + sign * h[name] * float(directions[name]))
        moved = Problem(problem.op, inputs, problem.options, problem.grad_out)
        args, options = _converted(moved, from_array)
        terms = f64(_call(forward, "forward", moved, args, options, to_array)[0]) * g
        return float(np.sum(terms)), float(np.sum(np.abs(terms)))

    numeric, noise = 0.0, 0.0
    for name in problem.inputs:  # each input moved alone, with its own step
        (up, up_size), (down, down_size) = value(name, 1), value(name, -1)
        numeric += (up - down) / (2 * h[name])
        noise += 8 * np.finfo(np.float64).eps * (up_size + down_size) / (2 * h[name])
    analytic = sum(float(np.sum(f64(gr) * directions[name]))
                   for name, gr in zip(problem.inputs, grads))
    # the backward's own rounding, by its error scales (its value may be all rounding)
    noise += FACTOR * np.finfo(np.float64).eps * sum(
        float(np.sum(np.abs(f64(scale) * directions[name])))
        for name, scale in zip(problem.inputs, problem.error_scales("backward")))
    size = sum(float(np.sum(np.abs(f64(gr) * directions[name])))
               for name, gr in zip(problem.inputs, grads)) + 1e-12
    if not abs(numeric - analytic) <= 1e-4 * size + noise:
        raise AssertionError(f"{problem.op}: the backward is not the derivative of the "
                             f"forward: along a random direction, central differences give "
                             f"{numeric:.9g}, the backward {analytic:.9g}\n{problem!r}")


def derived_problems(problem):
    """Problems made from ``problem`` that every example also checks: for a selection, its
    input reduced to two levels (ties at every rank, so the tie rule is always exercised); for
    a set pool drawn without a mask, a mask leaving out the last sample of every set."""
    op = problem.op
    if op in SELECTIONS and problem.inputs["x"].size:
        x = problem.inputs["x"]
        tied = np.where(f64(x) > np.median(f64(x)), 1.0, 0.0).astype(x.dtype)
        yield Problem(op, {"x": tied}, problem.options, problem.grad_out)
    if op in SET_POOLS and problem.options.get("mask") is None:
        a = problem.inputs["assign"]
        if a.shape[1] >= 2:
            mask = np.ones(a.shape[:2], bool)
            mask[:, -1] = False
            yield Problem(op, problem.inputs, {**problem.options, "mask": mask},
                          problem.grad_out)


def check_problem(problem: Problem, forward: Callable[..., Any],
                  backward: Optional[Callable[..., Any]] = None, *,
                  to_array: Optional[Callable[[Any], Any]] = np.asarray,
                  from_array: Optional[Callable[[Any], Any]] = None,
                  derived: bool = True) -> None:
    """Every check of ``check_op`` on one problem (what ``check_op`` runs per example).

    Parameters
    ----------
    problem : Problem
    forward : callable
        With npool's signature for ``problem.op``.
    backward : callable, optional
        With npool's backward signature; not checked when None.
    to_array : callable, optional
        Turns results into NumPy arrays; default ``numpy.asarray``.
    from_array : callable, optional
        Turns NumPy inputs into what ``forward`` takes (``torch.from_numpy``, ...).
    derived : bool, default True
        Also check the problem's derived problems (C-contiguous copies, the two-level tie
        version of selections).

    Raises
    ------
    AssertionError
        The first failed check, with the problem.

    Examples
    --------
    >>> x = np.arange(8, dtype=np.float64).reshape(1, 2, 4)
    >>> problem = npool.testing.Problem("global_max_pool", {"x": x}, {},
    ...                                 grad_out=np.ones((1, 2)))
    >>> npool.testing.check_problem(problem, npool.global_max_pool_forward,
    ...                             npool.global_max_pool_backward)
    """
    to_array = np.asarray if to_array is None else to_array
    if derived:
        for other in derived_problems(problem):
            check_problem(other, forward, backward, to_array=to_array, from_array=from_array,
                          derived=False)
    before = {name: np.array(a, copy=True) for name, a in problem.inputs.items()}
    args, options = _converted(problem, from_array)
    y = _call(forward, "forward", problem, args, options, to_array)
    for name, a in problem.inputs.items():
        if not np.array_equal(np.asarray(a), before[name], equal_nan=True):
            raise AssertionError(f"{problem.op} forward modified its input {name}\n"
                                 f"{problem!r}")
    assert_close(y, problem, "forward")
    _check_invariants(problem, f64(y[0]))
    if problem.op in SET_POOLS:
        _check_mask(problem, forward, to_array, from_array)
    if any(isinstance(a, np.ndarray) and not a.flags.c_contiguous for a in problem.args):
        contiguous = _contiguous(problem)
        c_args, c_options = _converted(contiguous, from_array)
        try:
            assert_close(_call(forward, "forward", contiguous, c_args, c_options, to_array),
                         contiguous)
        except AssertionError as error:
            raise AssertionError(f"{problem.op}: C-contiguous copies of the same inputs "
                                 f"fail\n{error}") from None
    if backward is None:
        return
    grad_out = problem.grad_out if from_array is None else from_array(problem.grad_out)
    grads = _call(backward, "backward", problem, (grad_out,) + args, options, to_array)
    for name, a in problem.inputs.items():
        if not np.array_equal(np.asarray(a), before[name], equal_nan=True):
            raise AssertionError(f"{problem.op} backward modified its input {name}\n"
                                 f"{problem!r}")
    assert_close(grads, problem, "backward")
    _directional_difference(problem, forward, backward, to_array, from_array, grads)


def check_op(op: str, forward: Callable[..., Any], backward: Optional[Callable[..., Any]] = None,
             *, max_examples: int = 100, to_array: Optional[Callable[[Any], Any]] = None,
             from_array: Optional[Callable[[Any], Any]] = None,
             dtypes: Optional[Sequence[str]] = None, layouts: Optional[Sequence[str]] = None,
             extreme: bool = True, shrink: bool = True,
             paddings: Optional[Sequence[str]] = None, dilations: bool = True) -> None:
    """Run npool's property suite on a user's ``forward`` (and ``backward``) for ``op``.

    hypothesis draws ``problems(op, ...)`` and each is checked for agreement with the float64
    reference (``assert_close``, forward and backward), the inputs left unmodified, the same
    results from C-contiguous copies of strided or channels-last inputs, invariants (a local
    pool's output within its window's [min, max]; LSE between mean and max, GeM between the
    min and max of max(x, eps); selections within
    max abs(x)), masked samples changing nothing (set pools), the tie rule (every selection
    problem is also checked with its input reduced to two levels) and, for float64 problems of
    smooth ops, central differences of the user's forward against the user's backward.

    Parameters
    ----------
    op : str
        One of ``OPS``.
    forward : callable
        With npool's signature for ``op``.
    backward : callable, optional
        With npool's backward signature; only the forward is checked when None.
    max_examples : int, default 100
        hypothesis examples to draw.
    to_array : callable, optional
        Turns results into NumPy arrays (default ``numpy.asarray``; for torch,
        ``lambda t: t.detach().numpy()``).
    from_array : callable, optional
        Turns the drawn NumPy inputs into what the functions take (``torch.from_numpy``).
    dtypes, layouts, paddings : sequence of str, optional
        Passed to ``problems`` (its defaults when None): a kernel that takes PyTorch's padding
        only is checked with ``paddings=("symmetric",)``.
    dilations : bool, default True
        Passed to ``problems``: False for a kernel without ``dilation=``.
    extreme : bool, default True
        Include large-magnitude values.
    shrink : bool, default True
        Let hypothesis shrink a failure to a minimal problem (False: report the first failing
        problem as drawn, faster).

    Raises
    ------
    AssertionError
        The (shrunk) failing problem and what failed.
    ImportError
        hypothesis is not installed.

    Examples
    --------
    >>> npool.testing.check_op("global_avg_pool", npool.global_avg_pool_forward,
    ...                        npool.global_avg_pool_backward, max_examples=10)
    """
    require_hypothesis()
    from hypothesis import HealthCheck, Phase, given, settings

    from .strategies import DTYPES, LAYOUTS, PADDINGS, problems
    check_op_name(op)
    strategy = problems(op, dtypes=DTYPES if dtypes is None else dtypes,
                        layouts=LAYOUTS if layouts is None else layouts, extreme=extreme,
                        paddings=PADDINGS if paddings is None else paddings,
                        dilations=dilations)

    phases = [p for p in Phase if shrink or p not in (Phase.shrink, Phase.explain)]

    @settings(max_examples=max_examples, deadline=None, database=None, phases=phases,
              report_multiple_bugs=False, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(problem):
        check_problem(problem, forward, backward, to_array=to_array, from_array=from_array)

    run()
