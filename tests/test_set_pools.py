"""LOUPE set pools: NetVLAD, NetRVLAD, NetFV, Soft-DBoW and Context Gating on
numpy arrays, against plain float64 loops and finite differences, with masks."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npool import set_pools as sp
from npool.testing import references
from npool.testing.tolerances import assert_within, vlad_scales
from helpers import central_differences, ref_fv, ref_vlad


def problem(seed=0, B=2, M=4, D=3, K=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, M, D))
    logits = rng.standard_normal((B, M, K))
    a = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    return rng, x, a


def test_forwards_match_plain_loops():
    rng, x, a = problem()
    c, mu = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    cw = rng.normal(1, 0.3, (3, 3))
    np.testing.assert_allclose(sp.netvlad_pool_forward(x, a, c), ref_vlad(x, a, c), rtol=1e-12)
    np.testing.assert_allclose(sp.netrvlad_pool_forward(x, a), ref_vlad(x, a), rtol=1e-12)
    np.testing.assert_allclose(sp.netfv_pool_forward(x, a, mu, cw), ref_fv(x, a, mu, cw),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sp.soft_dbow_pool_forward(a),
                               references.soft_dbow_pool_forward(a), rtol=1e-12)
    w, bias = rng.standard_normal((3, 3)), rng.standard_normal(3)
    np.testing.assert_allclose(sp.context_gating_forward(x, w, bias),
                               references.context_gating_forward(x, w, bias), rtol=1e-12)


@pytest.mark.parametrize("masked", [False, True])
def test_gradients_match_finite_differences(masked):
    rng, x, a = problem(1)
    mask = np.array([[True, False, True, True], [True, True, True, False]]) if masked else None
    c, mu = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    cw = rng.normal(1, 0.3, (3, 3))
    g_vlad = rng.standard_normal((2, 9))
    g_fv = rng.standard_normal((2, 18))
    g_bow = rng.standard_normal((2, 3))
    cases = [
        (lambda *p: sp.netvlad_pool_forward(*p, mask=mask), [x, a, c], g_vlad,
         sp.netvlad_pool_backward(g_vlad, x, a, c, mask=mask)),
        (lambda *p: sp.netrvlad_pool_forward(*p, mask=mask), [x, a], g_vlad,
         sp.netrvlad_pool_backward(g_vlad, x, a, mask=mask)),
        (lambda *p: sp.netfv_pool_forward(*p, mask=mask), [x, a, mu, cw], g_fv,
         sp.netfv_pool_backward(g_fv, x, a, mu, cw, mask=mask)),
        (lambda *p: sp.soft_dbow_pool_forward(*p, mask=mask), [a], g_bow,
         (sp.soft_dbow_pool_backward(g_bow, a, mask=mask),)),
    ]
    for forward, inputs, g, analytic in cases:
        for i, grad in enumerate(analytic):
            def f(v, i=i):
                args = list(inputs)
                args[i] = v
                return float(np.sum(forward(*args) * g))
            np.testing.assert_allclose(grad, central_differences(f, inputs[i]), rtol=1e-5,
                                       atol=1e-7)
            if masked and i < 2 and inputs[i].ndim == 3 and inputs[i].shape[:2] == (2, 4):
                assert np.all(grad[~mask] == 0)  # masked samples get no gradient
    w, bias = rng.standard_normal((3, 3)), rng.standard_normal(3)
    g = rng.standard_normal(x.shape)
    analytic = sp.context_gating_backward(g, x, w, bias)
    for i, v in enumerate([x, w, bias]):
        def f(p, i=i):
            args = [x, w, bias]
            args[i] = p
            return float(np.sum(sp.context_gating_forward(*args) * g))
        np.testing.assert_allclose(analytic[i], central_differences(f, v), rtol=1e-6,
                                   atol=1e-8)


@st.composite
def set_problems(draw, dtype):
    """(x, a, c, mask): sizes down to 1, values up to +-500 with ties, a random mask."""
    B, M, D, K = (draw(st.integers(1, n)) for n in (3, 5, 4, 4))
    values = st.one_of(st.floats(-500, 500, width=32), st.integers(-2, 2).map(float))
    x = draw(hnp.arrays(dtype, (B, M, D), elements=values))
    logits = draw(hnp.arrays(np.float64, (B, M, K), elements=st.floats(-5, 5)))
    a = (np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)).astype(dtype)
    c = draw(hnp.arrays(dtype, (D, K), elements=st.floats(-500, 500, width=32)))
    mask = draw(st.none() | hnp.arrays(np.bool_, (B, M)))
    return x, a, c, mask


@settings(max_examples=60, deadline=None)
@given(set_problems(np.float64) | set_problems(np.float32), st.data())
def test_vlad_matches_float64_reference(problem, data):
    x, a, c, mask = problem
    x64, a64, c64 = (v.astype(np.float64) for v in (x, a, c))
    a_ref = a64 if mask is None else a64 * mask[..., None]
    y, norms = sp.netvlad_pool_forward(x, a, c, mask, return_norms=True)
    assert y.dtype == x.dtype and norms.shape == (x.shape[0], a.shape[2] + 1)
    # Tolerances follow the conditioning (cancellation in V, norms at their floor).
    assert_within(y, ref_vlad(x64, a_ref, c64), vlad_scales(x64, a_ref, c64), x.dtype)
    assert_within(sp.netrvlad_pool_forward(x, a, mask), ref_vlad(x64, a_ref),
                  vlad_scales(x64, a_ref), x.dtype)
    # The backward from the forward's state is the recomputing backward, bit for bit.
    g = data.draw(hnp.arrays(x.dtype, y.shape, elements=st.floats(-1, 1, width=32)))
    recomputed = sp.netvlad_pool_backward(g, x, a, c, mask)
    reused = sp.netvlad_pool_backward(g, x, a, c, mask, output=y, norms=norms)
    for r, u in zip(recomputed, reused):
        assert r.dtype == x.dtype and np.all(np.isfinite(r))
        np.testing.assert_array_equal(r, u)
    if mask is not None:
        assert np.all(recomputed[0][~mask] == 0) and np.all(recomputed[1][~mask] == 0)


def test_masked_batch_equals_the_lists_run_one_by_one():
    rng, x, a = problem(2, B=3, M=5)
    lengths = [5, 2, 3]
    mask = np.arange(5)[None, :] < np.array(lengths)[:, None]
    x = np.where(mask[..., None], x, 1e3)  # padding full of junk: it must not matter
    c, mu = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    cw = rng.normal(1, 0.3, (3, 3))
    batch = [sp.netvlad_pool_forward(x, a, c, mask), sp.netrvlad_pool_forward(x, a, mask),
             sp.netfv_pool_forward(x, a, mu, cw, mask), sp.soft_dbow_pool_forward(a, mask)]
    for b, n in enumerate(lengths):
        xb, ab = x[b:b + 1, :n], a[b:b + 1, :n]
        single = [sp.netvlad_pool_forward(xb, ab, c), sp.netrvlad_pool_forward(xb, ab),
                  sp.netfv_pool_forward(xb, ab, mu, cw), sp.soft_dbow_pool_forward(ab)]
        for got, expected in zip(batch, single):
            np.testing.assert_allclose(got[b], expected[0], rtol=1e-12, atol=1e-15)


def test_all_zero_residual_is_safe():
    _, x, a = problem(3)
    a[:, :, 1] = 0  # cluster 1 gets nothing: its residual is exactly zero
    c = np.zeros((3, 3))
    y = sp.netvlad_pool_forward(x, a, c)
    assert np.all(np.isfinite(y)) and np.all(y.reshape(2, 3, 3)[:, :, 1] == 0)
    grads = sp.netvlad_pool_backward(np.ones_like(y), x, a, c)
    assert all(np.all(np.isfinite(gr)) for gr in grads)
    zero = np.zeros((1, 2, 3))
    assert np.all(sp.netrvlad_pool_forward(zero, np.full((1, 2, 2), 0.5)) == 0)


def test_results_are_new_writable_arrays():
    rng, x, a = problem(4)
    c, cw = rng.standard_normal((3, 3)), rng.normal(1, 0.3, (3, 3))
    x0, a0 = x.copy(), a.copy()
    results = [sp.soft_dbow_pool_backward(np.ones((2, 3)), a),
               *sp.netvlad_pool_backward(np.ones((2, 9)), x, a, c),
               *sp.netfv_pool_backward(np.ones((2, 18)), x, a, c, cw),
               *sp.netvlad_pool_forward(x, a, c, return_norms=True)]
    for r in results:
        assert r.flags.writeable and r.flags.c_contiguous and not np.shares_memory(r, x)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(a, a0)


def test_d_major_layout():
    """Output index d * K + k, so LOUPE's weights (built on that order) load unchanged."""
    x = np.zeros((1, 1, 2))
    x[0, 0] = [3.0, 4.0]
    a = np.array([[[1.0, 0.0]]])
    y = sp.netrvlad_pool_forward(x, a)  # V[d, 0] = x[d], V[d, 1] = 0
    np.testing.assert_allclose(y[0], [0.6, 0.0, 0.8, 0.0])


def test_errors():
    _, x, a = problem()
    with pytest.raises(ValueError, match="centers must have shape"):
        sp.netvlad_pool_forward(x, a, np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"mask must have shape \(B, M\)"):
        sp.netrvlad_pool_forward(x, a, np.ones((2, 3), bool))
    with pytest.raises(TypeError, match="mask must be an array of bools"):
        sp.netrvlad_pool_forward(x, a, np.ones((2, 4)))
    with pytest.raises(ValueError, match="x and assign must agree"):
        sp.netrvlad_pool_forward(x, a[:, :3])
    with pytest.raises(TypeError, match="assign must have the dtype"):
        sp.netrvlad_pool_forward(x, a.astype(np.float32))
    with pytest.raises(ValueError, match="grad_out must have the forward output's shape"):
        sp.netrvlad_pool_backward(np.zeros((2, 8)), x, a)
    y, norms = sp.netrvlad_pool_forward(x, a, return_norms=True)
    with pytest.raises(ValueError, match="output and norms must be given together"):
        sp.netrvlad_pool_backward(y, x, a, output=y)
    with pytest.raises(ValueError, match=r"norms must have shape \(2, 4\)"):
        sp.netrvlad_pool_backward(y, x, a, output=y, norms=norms[:, :3])
