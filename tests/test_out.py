"""``out=`` on every op's forward and backward (CPU): the same bits as a fresh result, the out
array itself returned, every dtype and layout (an out of another layout is filled through a
buffer), errors that name the argument, and no result-sized allocation when out matches."""
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npool
from npool._checks import bfloat16
from npool.testing.strategies import channels_last

DTYPES = [np.float32, np.float64, np.float16, bfloat16()]


def _rng():
    return np.random.default_rng(7)


def _local_cases():
    """(name, forward(x, **out), backward(g, x, **out), x's spatial rank, results of backward)."""
    lam = 0.7
    return [
        ("soft_pool1d", lambda x, **o: npool.soft_pool1d_forward(x, 3, 2, 1, True, **o),
         lambda g, x, **o: npool.soft_pool1d_backward(g, x, 3, 2, 1, True, **o), 1),
        ("soft_pool2d", lambda x, **o: npool.soft_pool2d_forward(x, 2, **o),
         lambda g, x, **o: npool.soft_pool2d_backward(g, x, 2, **o), 2),
        ("soft_pool2d_overlapping", lambda x, **o: npool.soft_pool2d_forward(x, 3, 1, 1, **o),
         lambda g, x, **o: npool.soft_pool2d_backward(g, x, 3, 1, 1, **o), 2),
        ("soft_pool2d_gaps", lambda x, **o: npool.soft_pool2d_forward(x, 2, 3, **o),
         lambda g, x, **o: npool.soft_pool2d_backward(g, x, 2, 3, **o), 2),
        ("soft_pool3d", lambda x, **o: npool.soft_pool3d_forward(x, 2, **o),
         lambda g, x, **o: npool.soft_pool3d_backward(g, x, 2, **o), 3),
        ("maxent_pool2d", lambda x, **o: npool.maxent_pool2d_forward(x, lam, 2, **o),
         lambda g, x, **o: npool.maxent_pool2d_backward(g, x, lam, 2, **o), 2),
        ("adaptive_soft_pool2d", lambda x, **o: npool.adaptive_soft_pool2d_forward(x, (3, 2),
                                                                                   **o),
         lambda g, x, **o: npool.adaptive_soft_pool2d_backward(g, x, (3, 2), **o), 2),
        ("adaptive_maxent_pool3d", lambda x, **o: npool.adaptive_maxent_pool3d_forward(
            x, lam, (2, None, 4), **o),
         lambda g, x, **o: npool.adaptive_maxent_pool3d_backward(g, x, lam, (2, None, 4), **o),
         3),
    ]


LOCAL = _local_cases()


@pytest.mark.parametrize("name,forward,backward,nd", LOCAL, ids=[c[0] for c in LOCAL])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=15, deadline=None)
@given(sides=st.lists(st.integers(1, 9), min_size=3, max_size=3), layout=st.sampled_from(
    ["contiguous", "channels_last"]), out_layout=st.sampled_from(["same", "fortran"]),
    batched=st.booleans())
def test_local_pools_write_the_same_bits_into_out(name, forward, backward, nd, dtype, sides,
                                                  layout, out_layout, batched):
    shape = (2, 3) + tuple(sides[:nd])
    x = _rng().standard_normal(shape).astype(dtype)
    if layout == "channels_last":
        x = channels_last(x)
    if not batched:
        x = x[0]
    try:
        y = forward(x)
    except ValueError:  # a window larger than the input: refused with or without out=
        return
    g = _rng().standard_normal(y.shape).astype(dtype)
    grads = backward(g, x)
    grad_x = grads[0] if isinstance(grads, tuple) else grads

    def destination(like):
        a = np.full(like.shape, 7, dtype)
        return np.asfortranarray(a) if out_layout == "fortran" else \
            (np.empty_like(like) if like.ndim else a)

    out_y = destination(y)
    assert forward(x, out=out_y) is out_y
    np.testing.assert_array_equal(out_y, y)
    out_gx = destination(x)
    if isinstance(grads, tuple):  # Max-Ent: (grad_x, grad_lam)
        out_lam = np.zeros(np.shape(grads[1]), dtype)
        result = backward(g, x, out=(out_gx, out_lam))
        assert result[0] is out_gx and result[1] is out_lam
        np.testing.assert_array_equal(out_lam, grads[1])
        result = backward(g, x, out=(None, out_lam))  # either destination may be None
        np.testing.assert_array_equal(result[0], grad_x)
    else:
        assert backward(g, x, out=out_gx) is out_gx
    np.testing.assert_array_equal(out_gx, grad_x)
    # A buffer full of stale values (the last step's gradient) is overwritten everywhere,
    # uncovered cells included.
    out_gx[...] = 5
    backward(g, x, out=(out_gx, None) if isinstance(grads, tuple) else out_gx)
    np.testing.assert_array_equal(out_gx, grad_x)


GLOBAL = [
    ("max", npool.global_max_pool_forward, npool.global_max_pool_backward, {}, True),
    ("avg", npool.global_avg_pool_forward, npool.global_avg_pool_backward, {}, False),
    ("lse", npool.global_lse_pool_forward, npool.global_lse_pool_backward, {"beta": 3.0},
     False),
    ("kmax", npool.global_kmax_pool_forward, npool.global_kmax_pool_backward, {"k": 3}, True),
    ("weldon", npool.weldon_pool_forward, npool.weldon_pool_backward,
     {"kmax": 2, "kmin": 3, "alpha": 0.5}, True),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_gem_writes_the_same_bits_into_out(dtype, layout, keepdims):
    """GeM's y, grad_x (any destination layout) and grad_p (p's shape) into out=."""
    x = _rng().standard_normal((3, 4, 5, 6)).astype(dtype)
    if layout == "channels_last":
        x = channels_last(x)
    p = np.array([1.0, 2.5, 3.0, 8.0])
    y = npool.global_gem_pool_forward(x, p, keepdims=keepdims)
    out = np.full(y.shape, 7, dtype)
    assert npool.global_gem_pool_forward(x, p, keepdims=keepdims, out=out) is out
    np.testing.assert_array_equal(out, y)
    g = _rng().standard_normal(y.shape).astype(dtype)
    grad_x, grad_p = npool.global_gem_pool_backward(g, x, p, keepdims=keepdims)
    assert grad_p.shape == p.shape and grad_p.dtype == dtype
    for destination in (np.full(x.shape, 7, dtype), channels_last(np.full(x.shape, 7, dtype)),
                        np.asfortranarray(np.full(x.shape, 7, dtype))):
        out_p = np.full(p.shape, 7, dtype)
        got = npool.global_gem_pool_backward(g, x, p, keepdims=keepdims,
                                             out=(destination, out_p))
        assert got[0] is destination and got[1] is out_p
        np.testing.assert_array_equal(destination, grad_x)
        np.testing.assert_array_equal(out_p, grad_p)


@pytest.mark.parametrize("name,forward,backward,kwargs,has_indices", GLOBAL,
                         ids=[c[0] for c in GLOBAL])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pools_write_the_same_bits_into_out(name, forward, backward, kwargs,
                                                   has_indices, dtype, layout, keepdims):
    x = _rng().standard_normal((3, 4, 5, 6)).astype(dtype)
    if layout == "channels_last":
        x = channels_last(x)
    y = forward(x, keepdims=keepdims, **kwargs)
    out = np.full(y.shape, 7, dtype)
    assert forward(x, keepdims=keepdims, out=out, **kwargs) is out
    np.testing.assert_array_equal(out, y)
    g = _rng().standard_normal(y.shape).astype(dtype)
    grad = backward(g, x, keepdims=keepdims, **kwargs)
    for destination in (np.full(x.shape, 7, dtype), channels_last(np.full(x.shape, 7, dtype)),
                        np.asfortranarray(np.full(x.shape, 7, dtype))):
        assert backward(g, x, keepdims=keepdims, out=destination, **kwargs) is destination
        np.testing.assert_array_equal(destination, grad)
    if has_indices:
        y, index = forward(x, keepdims=keepdims, return_indices=True, **kwargs)
        outs = (np.empty_like(y), np.empty_like(index))
        result = forward(x, keepdims=keepdims, return_indices=True, out=outs, **kwargs)
        assert result[0] is outs[0] and result[1] is outs[1]
        np.testing.assert_array_equal(outs[1], index)
        grad = backward(g, x, keepdims=keepdims, indices=index, **kwargs)
        destination = np.full(x.shape, 7, dtype)
        backward(g, x, keepdims=keepdims, indices=index, out=destination, **kwargs)
        np.testing.assert_array_equal(destination, grad)


def _set_cases():
    rng = _rng()
    B, M, D, K = 2, 5, 4, 3
    x = rng.standard_normal((B, M, D)).astype(np.float32)
    a = rng.random((B, M, K)).astype(np.float32)
    c = rng.standard_normal((D, K)).astype(np.float32)
    mu = rng.standard_normal((D, K)).astype(np.float32)
    w = rng.standard_normal((D, D)).astype(np.float32)
    b = rng.standard_normal(D).astype(np.float32)
    mask = np.array([[True] * M, [True, True, False, True, False]])
    return [
        ("netvlad", lambda **o: npool.netvlad_pool_forward(x, a, c, mask, **o),
         lambda g, **o: npool.netvlad_pool_backward(g, x, a, c, mask, **o)),
        ("netvlad_norms", lambda **o: npool.netvlad_pool_forward(x, a, c, return_norms=True,
                                                                 **o), None),
        ("netrvlad", lambda **o: npool.netrvlad_pool_forward(x, a, **o),
         lambda g, **o: npool.netrvlad_pool_backward(g, x, a, **o)),
        ("netfv", lambda **o: npool.netfv_pool_forward(x, a, mu, c, mask, **o),
         lambda g, **o: npool.netfv_pool_backward(g, x, a, mu, c, mask, **o)),
        ("soft_dbow", lambda **o: npool.soft_dbow_pool_forward(a, mask, **o),
         lambda g, **o: npool.soft_dbow_pool_backward(g, a, mask, **o)),
        ("context_gating", lambda **o: npool.context_gating_forward(x, w, b, **o),
         lambda g, **o: npool.context_gating_backward(g, x, w, b, **o)),
    ]


SETS = _set_cases()


@pytest.mark.parametrize("name,forward,backward", SETS, ids=[c[0] for c in SETS])
def test_set_pools_write_the_same_bits_into_out(name, forward, backward):
    y = forward()
    results = y if isinstance(y, tuple) else (y,)
    outs = tuple(np.full(r.shape, 7, r.dtype) for r in results)
    written = forward(out=outs if isinstance(y, tuple) else outs[0])
    for r, o, w in zip(results, outs, written if isinstance(y, tuple) else (written,)):
        assert w is o
        np.testing.assert_array_equal(o, r)
    if backward is None:
        return
    g = _rng().standard_normal(results[0].shape).astype(np.float32)
    grads = backward(g)
    grads = grads if isinstance(grads, tuple) else (grads,)
    outs = [np.full(r.shape, 7, r.dtype) for r in grads]
    if len(grads) > 1:
        outs[-1] = None  # an entry may be None: that result is new
    written = backward(g, out=tuple(outs) if len(grads) > 1 else outs[0])
    written = written if isinstance(written, tuple) else (written,)
    for r, o, w in zip(grads, outs, written):
        if o is not None:
            assert w is o
        np.testing.assert_array_equal(w, r)


# ------------------------------------------------------------------ errors
def _x():
    return _rng().standard_normal((2, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("out,error,message", [
    (np.empty((2, 3, 4, 4), np.float64), TypeError, "out must have dtype float32"),
    (np.empty((2, 3, 4, 5), np.float32), ValueError, r"out must have the result's shape"),
    ([None, None], ValueError, r"one entry per result \(1\), got 2"),
    ("buffer", TypeError, "out must be a numpy.ndarray, got str"),
    (np.ma.zeros((2, 3, 4, 4), np.float32), TypeError, "out must be a numpy.ndarray"),
])
def test_bad_out_is_refused_naming_it(out, error, message):
    with pytest.raises(error, match=message):
        npool.soft_pool2d_forward(_x(), 2, out=out)


def test_read_only_and_aliased_out_are_refused():
    x = _x()
    read_only = np.empty((2, 3, 4, 4), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        npool.soft_pool2d_forward(x, 2, out=read_only)
    g = np.ones((2, 3, 4, 4), np.float32)
    before = x.copy()
    with pytest.raises(ValueError, match="out must not share memory with x"):
        npool.soft_pool2d_backward(g, x, 2, out=x)
    np.testing.assert_array_equal(x, before)


def test_aliasing_grad_out_is_refused():
    x = _x()
    g = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        npool.global_max_pool_forward(x, out=x[:, :, 0, 0])
    buffer = np.empty((2, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="must not share memory with grad_out"):
        npool.global_avg_pool_backward(buffer[:, :, 0, 0], x, out=buffer)


def test_tuple_results_need_tuples():
    x = _x()
    g = np.ones((2, 3, 4, 4), np.float32)
    with pytest.raises(TypeError, match="tuple of 2"):
        npool.maxent_pool2d_backward(g, x, 0.5, 2, out=np.empty_like(x))
    with pytest.raises(TypeError, match=r"out\[1\] must have dtype float32"):
        npool.maxent_pool2d_backward(g, x, 0.5, 2, out=(None, np.zeros((), np.float64)))
    with pytest.raises(TypeError, match="tuple of 2"):
        npool.global_max_pool_forward(x, return_indices=True, out=np.empty((2, 3), np.float32))
    with pytest.raises(TypeError, match=r"out\[1\] must have dtype int64"):
        npool.global_max_pool_forward(x, return_indices=True,
                                      out=(None, np.empty((2, 3), np.int32)))


# ------------------------------------------------------------------ nothing allocated
def _peak_bytes(call):
    """The largest memory NumPy held at once during ``call`` (tracemalloc sees its buffers)."""
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", ["soft_pool2d", "maxent_pool2d", "global_avg", "global_lse",
                                  "global_kmax", "global_max"])
def test_out_of_the_right_layout_allocates_no_result(case, layout):
    """A training loop that passes its buffers allocates nothing of the result's size: the
    kernels write into them (scratch stays a small fraction of x)."""
    x = _rng().standard_normal((4, 64, 64, 64)).astype(np.float32)
    if layout == "channels_last":
        x = channels_last(x)
    like = np.empty_like(x)  # same layout as x
    if case == "soft_pool2d":
        y = np.empty_like(npool.soft_pool2d_forward(x, 2))
        g = np.ones_like(y)
        calls = [lambda o: npool.soft_pool2d_forward(x, 2, out=o),
                 lambda o: npool.soft_pool2d_backward(g, x, 2, out=o)]
        outs = [y, like]
    elif case == "maxent_pool2d":
        lam = np.full((64, 1, 1), 0.5, np.float32)
        y = np.empty_like(npool.maxent_pool2d_forward(x, lam, 2))
        g = np.ones_like(y)
        calls = [lambda o: npool.maxent_pool2d_forward(x, lam, 2, out=o),
                 lambda o: npool.maxent_pool2d_backward(g, x, lam, 2, out=(o, None))]
        outs = [y, like]
    else:
        forward, backward = {
            "global_avg": (npool.global_avg_pool_forward, npool.global_avg_pool_backward),
            "global_lse": (npool.global_lse_pool_forward, npool.global_lse_pool_backward),
            "global_kmax": (npool.global_kmax_pool_forward, npool.global_kmax_pool_backward),
            "global_max": (npool.global_max_pool_forward, npool.global_max_pool_backward),
        }[case]
        g = np.ones((4, 64), np.float32)
        calls = [lambda o: backward(g, x, out=o)]
        outs = [like]
    # Max-Ent's backward keeps dL/dlam of every output (y's size) before summing it to lam's
    # shape: the one result-sized scratch left.
    scratch = [0, y.nbytes] if case == "maxent_pool2d" else [0, 0]
    for call, out, extra in zip(calls, outs, scratch):
        call(out)  # warm up (kernel modules imported, thread pools started)
        assert _peak_bytes(lambda: call(out)) < x.nbytes // 8 + extra
    # without out=, the backward allocates its result
    assert _peak_bytes(lambda: calls[-1](None)) >= x.nbytes
