"""Helpers the test modules share (tests import from here, never from each other, so that they
also run under ``pytest --import-mode=importlib``; conftest.py puts this folder on the path)."""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import npool
from npool._checks import bfloat16
from npool.testing import reference, references
from npool.testing.strategies import channels_last, values


# ------------------------------------------------------------------ SoftPool calls
FORWARD = {1: npool.soft_pool1d_forward, 2: npool.soft_pool2d_forward,
           3: npool.soft_pool3d_forward}
BACKWARD = {1: npool.soft_pool1d_backward, 2: npool.soft_pool2d_backward,
            3: npool.soft_pool3d_backward}


def call_forward(x, nd, args):
    kernel, stride, padding, ceil_mode = args
    return FORWARD[nd](x, kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)


def call_backward(g, x, nd, args):
    kernel, stride, padding, ceil_mode = args
    return BACKWARD[nd](g, x, kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)


def ref_forward(x, nd, args):
    kernel, stride, padding, ceil_mode = args
    return reference(f"soft_pool{nd}d")[0](x, kernel, stride, padding, ceil_mode)


def ref_backward(g, x, nd, args):
    kernel, stride, padding, ceil_mode = args
    return reference(f"soft_pool{nd}d")[1](g, x, kernel, stride, padding, ceil_mode)


def scale_of(x):
    """Errors are measured relative to the magnitude of the values pooled."""
    return max(1.0, float(np.max(np.abs(x)))) if x.size else 1.0


def central_differences(f, x, eps=1e-6):
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += eps
        minus[index] -= eps
        grad[index] = (f(plus) - f(minus)) / (2 * eps)
    return grad


# ------------------------------------------------------------------ Max-Ent
def lam_of(mode, out_shape, batched, rng):
    """A lam of the given broadcast mode for an output of out_shape."""
    nd = len(out_shape) - (2 if batched else 1)
    if mode == "scalar":
        return float(rng.uniform(-2, 3))
    c = out_shape[1 if batched else 0]
    n = out_shape[0] if batched else 1
    ones = (1,) * nd
    shapes = {
        "channel": (c,) + ones,
        "sample_channel": ((n,) if batched else ()) + (c,) + ones,
        "position": out_shape[-nd:],
        "sample": ((n, 1) + ones) if batched else (1,) + ones,
        "other": (1,) * (len(out_shape) - 1) + (out_shape[-1],),
    }
    return rng.uniform(-2, 3, shapes[mode])


# ------------------------------------------------------------------ global pools
@st.composite
def global_problems(draw, dtype=np.float64, elements=values, max_side=6):
    """(x, layout): (N, C, *spatial) with 1 to 3 spatial axes, maybe in channels-last memory."""
    nd = draw(st.integers(1, 3))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3))) + tuple(
        draw(st.integers(1, max_side)) for _ in range(nd))
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    layout = draw(st.sampled_from(["contiguous", "channels_last"]))
    return (channels_last(x) if layout == "channels_last" else x), layout


# ------------------------------------------------------------------ set pools
def ref_vlad(x, a, c=None):
    """NetVLAD (NetRVLAD without c): npool.testing's float64 reference."""
    return references.netrvlad_pool_forward(x, a) if c is None else \
        references.netvlad_pool_forward(x, a, c)


def ref_fv(x, a, mu, cw):
    return references.netfv_pool_forward(x, a, mu, cw)


# what the GPU stores in 16 bits
HALF_DTYPES = (np.dtype(np.float16), bfloat16())
