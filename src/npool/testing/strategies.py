"""hypothesis strategies of npool problems (hypothesis needed): ``problems`` (what
``npool.testing.problems`` returns) and the building blocks for tests of one's own:
``window_args``, ``padding_args``, ``local_pool_inputs``, ``values`` and ``channels_last``."""
import numpy as np
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ._problems import GLOBAL, LOCAL, Problem, check_op_name
from .references import pool_windows, windows
from .tolerances import as_dtype

DTYPES = (np.float32, np.float64)
LAYOUTS = ("contiguous", "channels_last", "strided")
# Offsets under the drawn values: with extreme=True, maps around +-500 and +-1e4 (where
# exp overflows without max subtraction, and E[x^2] - E[x]^2 cancels) are drawn as often as
# maps around 0.
OFFSETS = (0.0, 500.0, -500.0, 1e4, -1e4)
# With extreme=True, one pool input in three is also split in two along one of its axes, the
# cells past the split lifted (or lowered) by a step: windows and maps far apart in one array,
# one near the offset and another about 1e3 above or below it. A kernel that subtracts the
# array's maximum (not each window's or map's) underflows to 0/0 on the low ones: exp(-745) is
# 0 in float64, exp(-104) in float32.
STEPS = (1e3, -1e3)


def _floats(bound):
    """Floats in [-bound, bound] that are 0 or at least 2**-20 in magnitude (and exact in
    float32): results at the bottom of the float range (subnormals, a kernel flushing them to
    zero) are not what these problems judge."""
    magnitude = st.floats(2.0 ** -20, bound, width=32)
    return st.one_of(st.just(0.0), magnitude, magnitude.map(lambda v: -v))


def _elements(extreme):
    small = st.one_of(st.integers(-2, 2).map(float), _floats(3))  # small ints: ties
    return st.one_of(small, _floats(500)) if extreme else small


@st.composite
def _values(draw, shape, dtype, extreme, ties=4, far_apart=False):
    offset = draw(st.sampled_from(OFFSETS)) if extreme else 0.0
    # one array in ``ties`` of small integers only: ties everywhere, also at the k-th largest
    elements = st.integers(-2, 2).map(float) if draw(st.integers(1, ties)) == 1 else \
        _elements(extreme)
    values = draw(hnp.arrays(np.float64, shape, elements=elements)) + offset
    axes = [axis for axis, n in enumerate(shape) if n > 1]
    if far_apart and extreme and axes and draw(st.integers(1, 3)) == 1:
        axis = draw(st.sampled_from(axes))
        split = draw(st.integers(1, shape[axis] - 1))
        past = (np.arange(shape[axis]) >= split).reshape((-1,) + (1,) * (len(shape) - axis - 1))
        values = values + draw(st.sampled_from(STEPS)) * past
    return values.astype(dtype)


# Values for local-pool inputs: the bulk of any magnitude up to +-500, small integers for ties.
values = st.one_of(
    st.floats(-500, 500, allow_nan=False, allow_infinity=False, width=32),
    st.integers(-2, 2).map(float),
)


# The forms of a local pool's padding the strategies draw: an int or per-axis ints (PyTorch's,
# at most half the kernel), per-axis (before, after) pairs (each less than the kernel), and
# TensorFlow's "same" and "valid" (in either case, as TensorFlow and JAX spell them)
PADDINGS = ("symmetric", "pairs", "same", "valid")


def _check_paddings(paddings):
    paddings = (paddings,) if isinstance(paddings, str) else tuple(paddings)
    if not paddings or any(form not in PADDINGS for form in paddings):
        raise ValueError(f"paddings must be some of {PADDINGS}, got {paddings!r}")
    return paddings


@st.composite
def padding_args(draw, kernel, paddings=PADDINGS):
    """``(padding, pairs)``: a padding argument for windows of ``kernel`` (a tuple) in one of
    the ``paddings`` forms, and its ``(before, after)`` pairs where they do not depend on the
    input's size (None for "same")."""
    form = draw(st.sampled_from(_check_paddings(paddings)))
    if form in ("same", "valid"):
        pairs = None if form == "same" else ((0, 0),) * len(kernel)
        return draw(st.sampled_from([form, form.upper()])), pairs
    if form == "pairs":
        pairs = tuple((draw(st.integers(0, k - 1)), draw(st.integers(0, k - 1)))
                      for k in kernel)
        return pairs, pairs
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    pairs = tuple((p, p) for p in padding)
    if len(set(padding)) == 1 and draw(st.booleans()):
        padding = padding[0]
    return padding, pairs


def _spatial(draw, kernel, pairs, extra):
    """Spatial sizes at least as long as each padded kernel (sometimes exactly), up to
    ``extra`` cells longer than the kernel."""
    low = [1 if pairs is None else max(1, k - before - after)
           for k, (before, after) in zip(kernel, pairs or [(0, 0)] * len(kernel))]
    return tuple(draw(st.integers(lo, k + extra)) for lo, k in zip(low, kernel))


@st.composite
def window_args(draw, nd, max_kernel=4, paddings=PADDINGS):
    """(kernel_size, stride, padding, ceil_mode) for nd axes, as ints or tuples (sometimes a
    plain int and the default stride, as users pass them); padding in one of the
    ``paddings`` forms (``PADDINGS``)."""
    kernel = tuple(draw(st.integers(1, max_kernel)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, max_kernel + 1)) for _ in range(nd))
    padding, _ = draw(padding_args(kernel, paddings))
    ceil_mode = draw(st.booleans())
    if len(set(kernel)) == 1 and draw(st.booleans()):
        kernel = kernel[0]
    if draw(st.booleans()):
        stride = None
    return kernel, stride, padding, ceil_mode


def as_tuple(v, nd):
    return tuple(v) if isinstance(v, tuple) else (v,) * nd


def _fixed_pairs(padding, nd):
    """(before, after) per axis of a padding argument, None for "same" (size-dependent)."""
    if isinstance(padding, str):
        return None if padding.lower() == "same" else ((0, 0),) * nd
    padding = as_tuple(padding, nd)
    return tuple(p if isinstance(p, tuple) else (p, p) for p in padding)


@st.composite
def local_pool_inputs(draw, nd=None, dtype=np.float64, elements=values, max_kernel=4,
                      batched=None, min_batch=1, paddings=PADDINGS):
    """A local-pool input and its window: (x, nd, (kernel_size, stride, padding, ceil_mode)),
    every axis at least as long as its padded kernel (sometimes exactly); padding in one of
    the ``paddings`` forms (``PADDINGS``)."""
    nd = draw(st.integers(1, 3)) if nd is None else nd
    args = draw(window_args(nd, max_kernel, paddings))
    kernel, _, padding, _ = args
    kernel = as_tuple(kernel, nd)
    spatial = _spatial(draw, kernel, _fixed_pairs(padding, nd), 5 if nd < 3 else 3)
    channels = draw(st.integers(1, 3))
    batched = draw(st.booleans()) if batched is None else batched
    shape = ((draw(st.integers(min_batch, 2)),) if batched else ()) + (channels,) + spatial
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    return x, nd, args


def channels_last(x, batched=True):
    """The same values as x in channels-last memory: (N, *spatial, C) seen as (N, C, *spatial)
    (or (*spatial, C) seen as (C, *spatial) when unbatched)."""
    c = 1 if batched else 0
    order = [a for a in range(x.ndim) if a != c] + [c]
    memory = np.ascontiguousarray(np.transpose(x, order))
    return np.transpose(memory, np.argsort(order))


def _in_layout(draw, a, layouts, channel_axis):
    """``a``'s values in one of ``layouts``: C order, channels-last memory (the channel axis
    last in memory, seen in the logical order) or a strided view into a larger buffer."""
    layout = draw(st.sampled_from(layouts))
    if layout == "channels_last" and channel_axis is not None and a.ndim >= 2:
        return channels_last(a, batched=channel_axis == 1)
    if layout == "strided" and a.ndim:
        step = draw(st.sampled_from([2, -1]))
        buffer = np.zeros(a.shape[:-1] + (a.shape[-1] * abs(step),), a.dtype)
        view = buffer[..., ::step] if step > 0 else buffer[..., ::-1]
        view[...] = a
        return view
    return np.ascontiguousarray(a)


def _grad_out(draw, problem, dtype):
    shape = np.shape(problem.reference("forward")[0])
    g = draw(hnp.arrays(np.float64, shape, elements=_floats(2)))
    return g.astype(dtype)


@st.composite
def _window(draw, nd, paddings, dilations):
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 5)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(nd)) \
        if dilations and draw(st.integers(0, 3)) == 0 else (1,) * nd
    extent = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
    padding, pairs = draw(padding_args(kernel, paddings))
    options = {"kernel_size": kernel[0] if len(set(kernel)) == 1 and draw(st.booleans())
               else kernel}
    if draw(st.booleans()):
        options["stride"] = stride
    if isinstance(padding, str) or pairs is None or any(b or a for b, a in pairs):
        options["padding"] = padding
    if draw(st.booleans()):
        options["ceil_mode"] = True
    if any(d > 1 for d in dilation):
        options["dilation"] = dilation[0] if len(set(dilation)) == 1 else dilation
    spatial = _spatial(draw, extent, pairs, 4 if nd < 3 else 2)
    # a dilated window may step over every cell of a short input: npool refuses those
    assume(all(w.stop > w.start for _, window in windows(
        spatial, kernel, options.get("stride"), padding, options.get("ceil_mode", False),
        dilation) for w in window))
    return options, spatial


@st.composite
def _adaptive_window(draw, nd):
    """An adaptive pool's ``output_size`` (an int, or per axis an int or None) and the input's
    spatial size: output sizes that divide the input (the kernels' fast path) and that do not,
    above the input's size too."""
    spatial = tuple(draw(st.integers(1, 9 if nd < 3 else 5)) for _ in range(nd))
    sizes = tuple(draw(st.one_of(st.integers(1, n + 2), st.sampled_from(
        [d for d in range(1, n + 1) if n % d == 0]))) for n in spatial)
    if len(set(sizes)) == 1 and draw(st.booleans()):
        return {"output_size": sizes[0]}, spatial
    if draw(st.booleans()):  # None: the input's size on that axis
        sizes = tuple(None if draw(st.integers(0, 3)) == 0 else o for o in sizes)
    return {"output_size": sizes}, spatial


def _batch(draw, allow_empty=True):
    return draw(st.integers(0 if allow_empty and draw(st.integers(0, 9)) == 0 else 1, 2))


@st.composite
def _local(draw, op, dtype, layouts, extreme, paddings, dilations):
    nd = LOCAL[op]
    options, spatial = draw(_adaptive_window(nd) if op.startswith("adaptive") else
                            _window(nd, paddings, dilations))
    batched = draw(st.booleans())
    lead = ((_batch(draw),) if batched else ()) + (draw(st.integers(1, 3)),)
    x = _in_layout(draw, draw(_values(lead + spatial, dtype, extreme, far_apart=True)),
                   layouts, 1 if batched else 0)
    inputs = {"x": x}
    if "maxent" in op:
        out, _ = pool_windows(spatial, **options)
        channels = (lead[-1],) + (1,) * nd
        shapes = [None, (), channels, lead + (1,) * nd, out, lead + out]
        if batched:
            shapes.append((lead[0], 1) + (1,) * nd)
        shape = draw(st.sampled_from(shapes))
        lam_values = st.one_of(st.sampled_from([0.0, 1.0]), _floats(4))
        lam = draw(lam_values) if shape is None else draw(hnp.arrays(
            np.float64, shape, elements=lam_values)).astype(dtype)
        inputs["lam"] = lam
    problem = Problem(op, inputs, options)
    problem.grad_out = _grad_out(draw, problem, dtype)
    return problem


def _k(draw, n, allow_zero=False):
    return draw(st.one_of(st.integers(0 if allow_zero else 1, n + 2),
                          st.floats(0.01, 1.0, allow_nan=False), st.just(1.0)))


@st.composite
def _global(draw, op, dtype, layouts, extreme):
    spatial = tuple(draw(st.integers(1, 5)) for _ in range(draw(st.integers(1, 3))))
    shape = (_batch(draw), draw(st.integers(1, 3))) + spatial
    selects = op in ("global_max_pool", "global_kmax_pool", "weldon_pool")
    x = _in_layout(draw, draw(_values(shape, dtype, extreme, ties=2 if selects else 4,
                                      far_apart=True)), layouts, 1)
    n = int(np.prod(spatial))
    options = {}
    if op == "global_kmax_pool":
        options["k"] = _k(draw, n)
    elif op == "weldon_pool":
        options["kmax"] = _k(draw, n)
        options["kmin"] = draw(st.one_of(st.none(), st.just(0), st.integers(1, n + 2),
                                         st.floats(0.01, 1.0, allow_nan=False)))
        options["alpha"] = draw(_floats(2))
    elif op == "global_lse_pool":
        options["beta"] = draw(_floats(4))
    elif op == "global_gem_pool":
        if draw(st.booleans()):
            options["eps"] = draw(st.sampled_from([1e-3, 0.5, 2.0]))
    if op in ("global_kmax_pool", "weldon_pool") and draw(st.booleans()):
        options["rounding"] = draw(st.sampled_from(["floor", "round"]))
    inputs = {"x": x}
    if op == "global_gem_pool":  # a number, shared, per channel or per map
        exponents = st.one_of(st.sampled_from([1.0, 3.0, 0.5, 60.0]), st.floats(0.1, 12.0))
        shape = draw(st.sampled_from([None, (), (1,), shape[1:2], shape[:2]]))
        inputs["p"] = draw(exponents) if shape is None else draw(hnp.arrays(
            np.float64, shape, elements=exponents)).astype(dtype)
    problem = Problem(op, inputs, options)
    problem.grad_out = _grad_out(draw, problem, dtype)
    return problem


@st.composite
def _set(draw, op, dtype, layouts, extreme):
    layouts = tuple(layout for layout in layouts if layout != "channels_last") or ("contiguous",)
    normal = _floats(2)

    def array(shape, elements=normal):
        return _in_layout(draw, draw(hnp.arrays(np.float64, shape, elements=elements)).astype(
            dtype), layouts, None)

    if op == "context_gating":
        n = draw(st.integers(1, 5))
        lead = draw(st.sampled_from([(_batch(draw),), (draw(st.integers(1, 2)), 3)]))
        x = _in_layout(draw, draw(_values(lead + (n,), dtype, extreme)), layouts, None)
        inputs = {"x": x, "weights": array((n, n)), "biases": array((n,))}
        problem = Problem(op, inputs, {})
        problem.grad_out = _grad_out(draw, problem, dtype)
        return problem
    b, m = _batch(draw), draw(st.integers(1, 6))
    d, k = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    logits = draw(hnp.arrays(np.float64, (b, m, k), elements=_floats(3)))
    assign = np.exp(logits - logits.max(axis=2, keepdims=True), dtype=np.float64)
    assign = _in_layout(draw, (assign / assign.sum(axis=2, keepdims=True)).astype(dtype),
                        layouts, None)
    inputs = {}
    if op != "soft_dbow_pool":
        inputs["x"] = _in_layout(draw, draw(_values((b, m, d), dtype, extreme)), layouts, None)
    inputs["assign"] = assign
    if op in ("netvlad_pool", "netfv_pool"):
        inputs["centers" if op == "netvlad_pool" else "mu"] = array((d, k))
    if op == "netfv_pool":
        magnitude = st.floats(0.3, 2.0)
        sign = draw(hnp.arrays(np.float64, (d, k), elements=st.sampled_from([-1.0, 1.0])))
        inputs["covar_weights"] = (sign * draw(hnp.arrays(np.float64, (d, k),
                                                          elements=magnitude))).astype(dtype)
    options = {}
    if draw(st.booleans()):
        options["mask"] = draw(hnp.arrays(bool, (b, m)))  # rows of all False included
    problem = Problem(op, inputs, options)
    problem.grad_out = _grad_out(draw, problem, dtype)
    return problem


def problems(op, *, dtypes=DTYPES, layouts=LAYOUTS, extreme=True, paddings=PADDINGS,
             dilations=True):
    """A hypothesis strategy of ``npool.testing.Problem``s for ``op`` (see the package doc)."""
    check_op_name(op)
    dtypes = tuple(as_dtype(d) for d in ((dtypes,) if isinstance(dtypes, (str, type))
                                          else dtypes))
    allowed = ("float16", "bfloat16", "float32", "float64")
    for d in dtypes:
        if d.name not in allowed:
            raise ValueError(f"dtypes must be among {allowed}, got {d}")
    layouts = (layouts,) if isinstance(layouts, str) else tuple(layouts)
    for layout in layouts:
        if layout not in LAYOUTS:
            raise ValueError(f"layouts must be among {LAYOUTS}, got {layout!r}")
    paddings = _check_paddings(paddings)
    if op in LOCAL:
        return st.sampled_from(dtypes).flatmap(
            lambda dtype: _local(op, dtype, layouts, bool(extreme), paddings, bool(dilations)))
    family = _global if op in GLOBAL else _set
    return st.sampled_from(dtypes).flatmap(
        lambda dtype: family(op, dtype, layouts, bool(extreme)))
