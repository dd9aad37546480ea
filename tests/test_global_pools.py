"""Global pools on the CPU: max, avg, k-max, LogSumExp and WELDON against float64 references,
finite differences, the k rule, ties, layouts, thread counts and errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npool
from npool.testing import references as ref
from npool.testing.strategies import channels_last, values
from npool.testing.tolerances import assert_within
from helpers import central_differences, global_problems


ks = st.one_of(st.integers(1, 40), st.floats(0.01, 1.0))


def close(actual, expected, dtype, terms=None):
    """actual within rounding of expected. ``terms``: per element, the magnitude of the terms
    the op adds up (for a mean, the largest |x| of the map), which bounds the rounding error
    whatever cancels; by default the largest |expected| (gradients, whose entries are single
    terms)."""
    if terms is None:
        terms = max(1.0, float(np.max(np.abs(expected)))) if np.size(expected) else 1.0
    assert_within(actual, expected, np.maximum(terms, np.abs(expected)), dtype)


def map_magnitude(m):
    """The largest |x| of every map of m (N, C, S), as (N, C)."""
    return np.abs(m).max(axis=2)


# ------------------------------------------------------------------ forward vs reference
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_max_avg_and_lse_match_reference(dtype, data):
    x, _ = data.draw(global_problems(dtype))
    beta = data.draw(st.sampled_from([1.0, 0.0, -1.0, 0.5, 3.0]))
    m = ref.maps(x)
    assert npool.global_max_pool_forward(x).dtype == dtype
    np.testing.assert_array_equal(npool.global_max_pool_forward(x), m.max(axis=2).astype(dtype))
    close(npool.global_avg_pool_forward(x), m.mean(axis=2), dtype, map_magnitude(m))
    lse = npool.global_lse_pool_forward(x, beta=beta)
    # LSE is as exact as beta*x and the sum of exponentials are: their rounding error is
    # scaled up by 1/beta.
    close(lse, ref.global_lse_pool_forward(x, beta), dtype,
          map_magnitude(m) + (1 / abs(beta) if beta else 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_kmax_and_weldon_match_reference(dtype, data):
    x, _ = data.draw(global_problems(dtype))
    k = data.draw(ks)
    close(npool.global_kmax_pool_forward(x, k=k), ref.global_kmax_pool_forward(x, k), dtype,
          map_magnitude(ref.maps(x)))
    kmin = data.draw(st.one_of(st.none(), st.integers(0, 40), st.floats(0.01, 1.0)))
    alpha = data.draw(st.sampled_from([1.0, 0.5, -2.0, 0.0]))
    close(npool.weldon_pool_forward(x, kmax=k, kmin=kmin, alpha=alpha),
          ref.weldon_pool_forward(x, k, kmin, alpha), dtype,
          (1 + abs(alpha)) * map_magnitude(ref.maps(x)))


# ------------------------------------------------------------------ backward
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_backward_matches_reference(dtype, data):
    x, _ = data.draw(global_problems(dtype))
    g = np.random.default_rng(data.draw(st.integers(0, 99))).standard_normal(x.shape[:2])
    g = g.astype(dtype)
    m = ref.maps(x)
    n = m.shape[2]
    expected = np.zeros_like(m)
    for a, b in np.ndindex(*m.shape[:2]):
        expected[a, b, ref.ranked(m[a, b])[0]] = g[a, b]
    close(npool.global_max_pool_backward(g, x), expected.reshape(x.shape), dtype)
    close(npool.global_avg_pool_backward(g, x),
          np.broadcast_to((g / n)[..., None], m.shape).reshape(x.shape), dtype)
    beta = data.draw(st.sampled_from([1.0, 0.0, -0.5, 2.0]))
    close(npool.global_lse_pool_backward(g, x, beta=beta),
          ref.global_lse_pool_backward(g, x, beta), dtype)
    k = data.draw(ks)
    close(npool.global_kmax_pool_backward(g, x, k=k), ref.global_kmax_pool_backward(g, x, k),
          dtype)
    kmin = data.draw(st.one_of(st.none(), st.integers(0, 40)))
    close(npool.weldon_pool_backward(g, x, kmax=k, kmin=kmin, alpha=-0.5),
          ref.weldon_pool_backward(g, x, k, kmin, -0.5), dtype)


@settings(max_examples=25)
@given(data=st.data())
def test_backward_matches_finite_differences(data):
    shape = (2, 2) + tuple(data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    n = int(np.prod(shape[2:]))
    rng = np.random.default_rng(data.draw(st.integers(0, 999)))
    # Distinct values at least 0.01 apart: the selection does not change within +-eps.
    x = (rng.permutation(shape[0] * shape[1] * n) * 0.01 - 1).reshape(shape)
    g = rng.standard_normal(shape[:2])
    beta = data.draw(st.sampled_from([1.0, -2.0, 0.0, 5.0]))
    k = data.draw(st.integers(1, n))
    kmin = data.draw(st.integers(0, n))
    cases = [
        (lambda v: npool.global_lse_pool_forward(v, beta=beta),
         npool.global_lse_pool_backward(g, x, beta=beta)),
        (lambda v: npool.global_kmax_pool_forward(v, k=k),
         npool.global_kmax_pool_backward(g, x, k=k)),
        (lambda v: npool.weldon_pool_forward(v, k, kmin, 0.7),
         npool.weldon_pool_backward(g, x, k, kmin, 0.7)),
        (npool.global_max_pool_forward, npool.global_max_pool_backward(g, x)),
        (npool.global_avg_pool_forward, npool.global_avg_pool_backward(g, x)),
    ]
    for forward, analytic in cases:
        numeric = central_differences(lambda v: float(np.sum(forward(v) * g)), x)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ the k rule and its edges
def test_k_rule():
    x = np.arange(100.0).reshape(1, 1, 10, 10)
    _, index = npool.global_kmax_pool_forward(x, k=0.29, return_indices=True)
    assert index.shape == (1, 1, 29)  # 0.29 * 100 is 28.999...: the epsilon gives 29
    np.testing.assert_array_equal(index[0, 0], np.arange(71, 100))
    assert npool.global_kmax_pool_forward(x, k=1000).item() == 49.5  # clipped to n
    assert npool.global_kmax_pool_forward(x, k=0.001).item() == 99.0  # at least one cell
    assert npool.global_kmax_pool_forward(x, k=1.0).item() == 49.5
    assert npool.weldon_pool_forward(x, kmax=2, kmin=0).item() == 98.5
    assert npool.weldon_pool_forward(x, kmax=2).item() == 98.5 + 0.5  # kmin = kmax


def test_overlapping_top_and_bottom_sets_count_twice():
    x = np.array([[[3.0, 1.0, 2.0]]])
    y, index = npool.weldon_pool_forward(x, kmax=2, kmin=2, alpha=1.0, return_indices=True)
    assert y.item() == (3 + 2) / 2 + (1 + 2) / 2
    np.testing.assert_array_equal(index[0, 0], [0, 2, 1, 2])
    grad = npool.weldon_pool_backward(np.ones((1, 1)), x, kmax=2, kmin=2)
    np.testing.assert_array_equal(grad, [[[0.5, 0.5, 1.0]]])


def test_ties_go_to_lower_flat_indices_in_both_layouts():
    x = np.array([[[[1.0, 5.0], [5.0, 1.0]], [[2.0, 2.0], [2.0, 2.0]]]])  # (1, 2, 2, 2)
    for layout_x in (x, channels_last(x)):
        y, index = npool.global_max_pool_forward(layout_x, return_indices=True)
        np.testing.assert_array_equal(index, [[1, 0]])
        _, index = npool.weldon_pool_forward(layout_x, kmax=1, kmin=2, return_indices=True)
        np.testing.assert_array_equal(index, [[[1, 0, 3], [0, 0, 1]]])
    zeros = np.array([[[0.0, -0.0, 0.0]]])
    _, index = npool.global_kmax_pool_forward(zeros, k=2, return_indices=True)
    np.testing.assert_array_equal(index[0, 0], [0, 1])  # -0 equals +0


def test_nan_wins_and_infinities():
    x = np.array([[[1.0, np.nan, 3.0, np.nan]]])
    y, index = npool.global_max_pool_forward(x, return_indices=True)
    assert np.isnan(y.item()) and index.item() == 1
    assert np.isnan(npool.global_lse_pool_forward(x).item())
    assert np.isnan(npool.global_kmax_pool_forward(x, k=1).item())
    _, index = npool.weldon_pool_forward(x, kmax=2, kmin=2, return_indices=True)
    np.testing.assert_array_equal(index[0, 0], [1, 3, 0, 2])  # NaN ranks above +inf
    inf = np.array([[[1.0, np.inf, -np.inf]]])
    assert npool.global_lse_pool_forward(inf).item() == np.inf
    assert npool.global_lse_pool_forward(inf, beta=-1).item() == -np.inf
    grad = npool.global_lse_pool_backward(np.ones((1, 1)), inf)
    np.testing.assert_array_equal(grad, [[[0.0, 1.0, 0.0]]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_activations(dtype):
    x = np.array([[[1e4, -1e4, 9999.0, 0.0]]], dtype)
    np.testing.assert_allclose(npool.global_lse_pool_forward(x).item(),
                               1e4 + np.log((1 + np.exp(-1.0)) / 4), rtol=1e-6)
    np.testing.assert_allclose(npool.global_lse_pool_forward(x, beta=-1).item(),
                               -1e4 + np.log(4), rtol=1e-6)
    assert np.all(np.isfinite(npool.global_lse_pool_backward(np.ones((1, 1), dtype), x)))


def test_lse_lies_between_mean_and_max_and_beta_zero_is_the_mean():
    x = np.random.default_rng(0).standard_normal((3, 4, 5, 6))
    mean, top = x.mean(axis=(2, 3)), x.max(axis=(2, 3))
    for beta in (1e-3, 0.5, 1.0, 10.0):
        y = npool.global_lse_pool_forward(x, beta=beta)
        assert np.all(mean - 1e-12 <= y) and np.all(y <= top + 1e-12)
    np.testing.assert_array_equal(npool.global_lse_pool_forward(x, beta=0.0),
                                  npool.global_avg_pool_forward(x))


def test_kmax_with_k_1_is_max():
    x = np.random.default_rng(1).integers(-3, 3, (2, 3, 7, 5)).astype(np.float32)
    np.testing.assert_array_equal(npool.global_kmax_pool_forward(x, k=1),
                                  npool.global_max_pool_forward(x))
    _, i1 = npool.global_kmax_pool_forward(x, k=1, return_indices=True)
    _, i2 = npool.global_max_pool_forward(x, return_indices=True)
    np.testing.assert_array_equal(i1[..., 0], i2)


# ------------------------------------------------------------------ shapes, layouts, threads
def test_keepdims_and_indices_round_trip():
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5, 6))
    y = npool.global_avg_pool_forward(x, keepdims=True)
    assert y.shape == (2, 3, 1, 1, 1)
    g = np.random.default_rng(3).standard_normal(y.shape)
    np.testing.assert_allclose(npool.global_avg_pool_backward(g, x, keepdims=True),
                               np.broadcast_to(g / 120, x.shape))
    for forward, backward, kwargs, width in [
            (npool.global_max_pool_forward, npool.global_max_pool_backward, {}, None),
            (npool.global_kmax_pool_forward, npool.global_kmax_pool_backward, {"k": 0.1}, 12),
            (npool.weldon_pool_forward, npool.weldon_pool_backward,
             {"kmax": 3, "kmin": 2, "alpha": 0.5}, 5)]:
        y, index = forward(x, keepdims=True, return_indices=True, **kwargs)
        assert y.shape == (2, 3, 1, 1, 1)
        assert index.shape == ((2, 3, 1, 1, 1) if width is None else (2, 3, width))
        g = np.random.default_rng(4).standard_normal(y.shape)
        np.testing.assert_array_equal(
            backward(g, x, keepdims=True, indices=index, **kwargs),
            backward(g, x, keepdims=True, **kwargs))


@given(global_problems(np.float32, max_side=40), st.sampled_from([0, 1, 2]))
@settings(max_examples=40)
def test_layouts_agree_and_threads_do_not_change_a_bit(problem, kind):
    x, _ = problem
    forward = [npool.global_max_pool_forward, npool.global_avg_pool_forward,
               lambda v: npool.global_lse_pool_forward(v, beta=0.7)][kind]
    expected = forward(np.ascontiguousarray(x))
    np.testing.assert_allclose(forward(x), expected, rtol=2e-6, atol=1e-5)
    results = []
    for threads in (1, 2, 3, 7):
        npool.set_num_threads(threads)
        results.append(forward(x))
        results.append(npool.weldon_pool_forward(x, kmax=0.2, kmin=3))
    for a, b in zip(results[2::2] + results[3::2], results[0:1] * 3 + results[1:2] * 3):
        np.testing.assert_array_equal(a, b)


def test_large_maps_span_several_chunks():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 70, 70)).astype(np.float32)  # 4900 cells: 3 chunks
    x[1, 2, 69, 69] = 50.0
    for a in (x, channels_last(x)):
        y, index = npool.global_max_pool_forward(a, return_indices=True)
        assert y[1, 2] == 50.0 and index[1, 2] == 4899
        np.testing.assert_allclose(npool.global_avg_pool_forward(a),
                                   x.astype(np.float64).mean(axis=(2, 3)), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(npool.global_lse_pool_forward(a, beta=2.0),
                                   ref.global_lse_pool_forward(x, 2.0), rtol=1e-6)


def test_other_strides_float16_and_empty_batch():
    x = np.random.default_rng(6).standard_normal((3, 4, 9, 9))[::2, ::-1, ::2]
    np.testing.assert_allclose(npool.global_kmax_pool_forward(x, k=5),
                               ref.global_kmax_pool_forward(x, 5), rtol=1e-12)
    h = x.astype(np.float16)
    y = npool.global_lse_pool_forward(h)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, npool.global_lse_pool_forward(h.astype(np.float32))
                                  .astype(np.float16))
    empty = np.zeros((0, 3, 4, 4), np.float32)
    assert npool.weldon_pool_forward(empty, kmax=2).shape == (0, 3)
    assert npool.global_max_pool_backward(np.zeros((0, 3), np.float32), empty).shape == \
        empty.shape


@given(global_problems(np.float32, elements=values, max_side=20),
       st.sampled_from([np.float16, np.float32, np.float64]),
       st.sampled_from([1.0, -2.5, 0.0, 1e-3, 40.0, 1e-40, 1e5]), st.booleans())
@settings(max_examples=60)
def test_lse_backward_reusing_the_forward_statistics_is_the_same_bits(problem, dtype, beta,
                                                                      keepdims):
    """stats= (the forward's M and S per map) spares the backward a pass of exponentials and
    changes no bit, whatever the values (NaN, infinities, overflow), beta, dtype and layout."""
    x, layout = problem
    x = x.astype(dtype)
    if layout == "channels_last":
        x = channels_last(np.ascontiguousarray(x))
    with np.errstate(all="ignore"):
        y = npool.global_lse_pool_forward(x, beta, keepdims)
        y_s, stats = npool.global_lse_pool_forward(x, beta, keepdims, return_stats=True)
        np.testing.assert_array_equal(y_s, y)
        assert stats.shape == x.shape[:2] + (2,) and stats.dtype == np.float64
        g = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
        grad = npool.global_lse_pool_backward(g, x, beta, keepdims)
        grad_s = npool.global_lse_pool_backward(g, x, beta, keepdims, stats=stats)
    assert grad_s.strides == grad.strides
    np.testing.assert_array_equal(grad_s, grad)


def test_lse_statistics_out_and_errors():
    x = np.random.default_rng(8).standard_normal((2, 3, 4, 5)).astype(np.float32)
    y, stats = npool.global_lse_pool_forward(x, 2.0, return_stats=True)
    out = (np.empty_like(y), np.empty((2, 3, 2)))
    result = npool.global_lse_pool_forward(x, 2.0, return_stats=True, out=out)
    assert result[0] is out[0] and result[1] is out[1]
    np.testing.assert_array_equal(out[1], stats)
    # M = max beta x (in x's precision), S = sum exp(beta x - M)
    m = (np.float32(2.0) * x).reshape(2, 3, -1).max(axis=2)
    np.testing.assert_array_equal(stats[..., 0], m)
    np.testing.assert_allclose(stats[..., 1], np.exp(2.0 * x.reshape(2, 3, -1).astype(
        np.float64) - m[..., None]).sum(axis=2), rtol=1e-6)
    _, zero = npool.global_lse_pool_forward(x, 0.0, return_stats=True)
    np.testing.assert_array_equal(zero, np.stack([np.zeros((2, 3)), np.full((2, 3), 20.0)], -1))
    _, empty = npool.global_lse_pool_forward(x[:0], return_stats=True)
    assert empty.shape == (0, 3, 2)
    g = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="stats must be the float64"):
        npool.global_lse_pool_backward(g, x, 2.0, stats=stats.astype(np.float32))
    with pytest.raises(TypeError, match="stats must be the float64"):
        npool.global_lse_pool_backward(g, x, 2.0, stats=stats.tolist())
    with pytest.raises(ValueError, match=r"stats must have shape \(2, 3, 2\)"):
        npool.global_lse_pool_backward(g, x, 2.0, stats=stats[:1])
    with pytest.raises(ValueError, match=r"stats must have shape"):
        npool.global_lse_pool_backward(g, x, 0.0, stats=stats[..., :1])
    with pytest.raises(TypeError, match="return_stats must be a bool"):
        npool.global_lse_pool_forward(x, return_stats=1)
    with pytest.raises(TypeError, match="out must be a tuple of 2"):
        npool.global_lse_pool_forward(x, return_stats=True, out=np.empty((2, 3), np.float32))


def test_inputs_are_not_modified():
    x = np.random.default_rng(7).standard_normal((2, 3, 5, 5))
    before = x.copy()
    npool.weldon_pool_backward(np.ones((2, 3)), x, kmax=3)
    npool.global_lse_pool_backward(np.ones((2, 3)), x)
    np.testing.assert_array_equal(x, before)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("k", [0, -1, 1.5, 0.0, float("nan"), "3", True, None])
def test_bad_k_is_a_value_error(k):
    with pytest.raises(ValueError, match="k"):
        npool.global_kmax_pool_forward(np.zeros((1, 1, 4)), k=k)


def test_other_errors():
    x = np.zeros((1, 2, 4))
    with pytest.raises(ValueError, match="kmin must be an int >= 0"):
        npool.weldon_pool_forward(x, kmax=1, kmin=-1)
    with pytest.raises(ValueError, match="beta must be finite"):
        npool.global_lse_pool_forward(x, beta=float("inf"))
    with pytest.raises(TypeError, match="alpha must be a real number"):
        npool.weldon_pool_forward(x, alpha="1")
    with pytest.raises(ValueError, match="grad_out must have the forward output's shape"):
        npool.global_kmax_pool_backward(np.zeros((1, 3)), x, k=2)
    with pytest.raises(ValueError, match=r"grad_out must have the forward output's shape \(1, 2, 1\)"):
        npool.global_max_pool_backward(np.zeros((1, 2)), x, keepdims=True)
    with pytest.raises(ValueError, match="at least one spatial axis"):
        npool.global_avg_pool_forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="indices must have shape"):
        npool.global_kmax_pool_backward(np.zeros((1, 2)), x, k=2, indices=np.zeros((1, 2, 3), int))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
        npool.global_kmax_pool_backward(np.zeros((1, 2)), x, k=1, indices=np.full((1, 2, 1), 4))
    with pytest.raises(TypeError, match="x must have dtype"):
        npool.global_max_pool_forward(np.zeros((1, 1, 3), np.int32))
