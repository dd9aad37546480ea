"""Hypothesis strategies for local-pool problems: shapes, window arguments and awkward values."""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


@st.composite
def window_args(draw, nd, max_kernel=4):
    """(kernel_size, stride, padding, ceil_mode) for nd axes, as ints or tuples."""
    kernel = tuple(draw(st.integers(1, max_kernel)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, max_kernel + 1)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    ceil_mode = draw(st.booleans())
    # Sometimes pass plain ints and the default stride, as users do.
    if len(set(kernel)) == 1 and draw(st.booleans()):
        kernel = kernel[0]
    if draw(st.booleans()):
        stride = None
    if len(set(padding)) == 1 and draw(st.booleans()):
        padding = padding[0]
    return kernel, stride, padding, ceil_mode


def as_tuple(v, nd):
    return tuple(v) if isinstance(v, tuple) else (v,) * nd


# Values: the bulk of any magnitude up to +-500, with small integers mixed in for ties.
values = st.one_of(
    st.floats(-500, 500, allow_nan=False, allow_infinity=False, width=32),
    st.integers(-2, 2).map(float),
)


@st.composite
def pool_problems(draw, nd=None, dtype=np.float64, elements=values, max_kernel=4,
                  batched=None, min_batch=1):
    """A random local-pool problem: (x, nd, (kernel_size, stride, padding, ceil_mode))."""
    nd = draw(st.integers(1, 3)) if nd is None else nd
    args = draw(window_args(nd, max_kernel))
    kernel, _, padding, _ = args
    kernel, padding = as_tuple(kernel, nd), as_tuple(padding, nd)
    # Every axis at least as long as its (padded) kernel; sometimes exactly the kernel.
    spatial = tuple(draw(st.integers(max(1, k - 2 * p), k + (5 if nd < 3 else 3)))
                    for k, p in zip(kernel, padding))
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
