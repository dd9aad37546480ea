"""No crash, no hang, no silently wrong number, by concern: process safety (the bad-input fuzzer,
a leak smoke test, fork), buffers handed in, threads and memory, errors that name the argument,
extreme values, layout-independent results, second order in npool.tf (a regression test for
each defect the hardening issue found, each failing before its fix).

Extreme-value results are compared with float64/mpmath references at float rounding level.
"""
import json
import os
import subprocess
import sys
import textwrap

import mpmath
import numpy as np
import pytest

import npool


HERE = os.path.dirname(os.path.abspath(__file__))


THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"


F32 = np.float32


def run_python(code, timeout=300):
    """Run ``code`` in a fresh interpreter; a crash or a hang fails only the calling test."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, cwd=HERE)


def rel_err(actual, expected):
    actual, expected = np.float64(actual), np.float64(expected)
    return abs(actual - expected) / abs(expected)


# ------------------------------------------------------------------ process safety
def test_bad_input_fuzzer_in_a_subprocess():
    """Every public function, ~1,500 bad calls (25,000 with HYPOTHESIS_PROFILE=thorough): only
    TypeError/ValueError or a result, never a crash, and the caller's arrays unchanged."""
    examples = 25000 if THOROUGH else 1500
    done = subprocess.run([sys.executable, os.path.join(HERE, "fuzz_bad_input.py"),
                           str(examples)], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    outcomes = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcomes["calls"] >= examples
    assert outcomes["TypeError"] and outcomes["ValueError"] and outcomes["returned"]


def test_leak_smoke():
    """A few thousand calls of every kind (results, errors, matmul=) do not grow the RSS."""
    done = run_python("""
        import numpy as np, npool
        def rss_mib():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096 / 2**20
        x = np.random.rand(2, 4, 16, 16).astype(np.float32)
        xs = np.random.rand(2, 6, 5).astype(np.float32); a = np.full((2, 6, 3), 1 / 3, np.float32)
        c = np.zeros((5, 3), np.float32)
        def round_():
            y = npool.soft_pool2d_forward(x, 3, 2, 1)
            npool.soft_pool2d_backward(np.ones_like(y), x, 3, 2, 1)
            npool.maxent_pool2d_backward(np.ones_like(y), x, np.float32(2), 3, 2, 1)
            npool.global_kmax_pool_backward(np.ones((2, 4), np.float32), x, 5)
            npool.global_lse_pool_forward(x, 1e-7)
            npool.netvlad_pool_backward(np.ones((2, 15), np.float32), xs, a, c, matmul=np.matmul)
            for bad in ((x, "no", 2), (x, np.nan, 2)):
                try:
                    npool.maxent_pool2d_forward(*bad)
                except (TypeError, ValueError):
                    pass
            try:
                npool.netfv_pool_forward(xs, a, c, c, matmul=lambda p, q: np.zeros((1, 1, 1)))
            except ValueError:
                pass
        for _ in range(300):
            round_()
        before = rss_mib()
        for _ in range(3000):
            round_()
        print(rss_mib() - before)
    """)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) < 16, done.stdout


FORK_CHILD = """
    import multiprocessing as mp, warnings, numpy as np, npool
    npool.set_num_threads(2)
    x = np.random.default_rng(0).random((4, 8, 64, 64)).astype(np.float32)
    expected = npool.soft_pool2d_forward(x, 3, 2, 1)

    def child(_):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            npool.set_num_threads(4)
        y = npool.soft_pool2d_forward(x, 3, 2, 1)
        g = npool.global_kmax_pool_backward(np.ones((4, 8), np.float32), x, 7)
        return y, float(g.sum()), npool.get_num_threads(), [str(w.message) for w in caught]

    with mp.get_context("fork").Pool(2) as pool:
        results = pool.map_async(child, range(3)).get(timeout=60)
    for y, total, threads, caught in results:
        assert np.array_equal(y, expected)
        assert abs(total - 32) < 1e-4
        assert threads == 1
        assert any("runs serially" in m for m in caught), caught
    print("ok")
"""


def test_fork_after_threads_runs_serially_in_the_child():
    """GNU OpenMP cannot start threads in a child forked after the parent used them (the child
    hung): npool runs such a child on one thread, with the same bits, and warns when asked for
    more."""
    done = run_python(FORK_CHILD, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


# ------------------------------------------------------------------ buffers handed in
@pytest.mark.parametrize("op", ["netvlad", "netrvlad", "netfv"])
@pytest.mark.parametrize("result,error", [
    (lambda p: np.zeros((1, 1, 1), p.dtype), ValueError),
    (lambda p: np.swapaxes(p, -1, -2), ValueError),
    (lambda p: p.astype(np.float64), TypeError),
    (lambda p: p.tolist(), TypeError),
])
def test_wrong_matmul_results_are_refused(op, result, error):
    x = np.random.rand(2, 5, 4).astype(F32)
    a = np.full((2, 5, 3), 1 / 3, F32)
    params = {"netvlad": (np.zeros((4, 3), F32),), "netrvlad": (),
              "netfv": (np.zeros((4, 3), F32), np.ones((4, 3), F32))}[op]
    saved = [p.copy() for p in (x, a) + params]
    with pytest.raises(error, match="matmul"):
        getattr(npool, f"{op}_pool_forward")(x, a, *params,
                                              matmul=lambda p, q: result(np.matmul(p, q)))
    for before, after in zip(saved, (x, a) + params):
        assert np.array_equal(before, after)


def test_matmul_results_that_alias_or_are_read_only_are_copied():
    """A matmul returning a read-only array or a view into its own operand is used through a
    copy: the in-place normalisation never writes into memory npool does not own."""
    x = np.random.rand(2, 5, 4).astype(F32)
    a = np.full((2, 5, 3), 1 / 3, F32)
    c = np.random.rand(4, 3).astype(F32)
    expected = npool.netvlad_pool_forward(x, a, c)

    def read_only(p, q):
        out = np.matmul(p, q)
        out.flags.writeable = False
        return out

    kept = []

    def kept_result(p, q):  # the caller keeps the result: npool must not change it
        out = np.matmul(p, q)
        kept.append((out, out.copy()))
        return out

    for matmul in (read_only, kept_result):
        np.testing.assert_allclose(npool.netvlad_pool_forward(x, a, c, matmul=matmul), expected,
                                   rtol=1e-6)
    for out, copy in kept:
        assert np.array_equal(out, copy)


def test_kernels_check_the_shapes_they_are_given():
    """The Cython entries refuse inconsistent buffers themselves (no write past a buffer even
    if Python passed a wrong size)."""
    from npool._cpu import kernel_module
    sets = kernel_module("_set_pools")
    v = np.zeros((2, 3, 4), F32)
    with pytest.raises(ValueError, match="norms"):
        sets.vlad_normalize(v, np.zeros((1, 1), F32), np.zeros((2, 4), F32),
                            np.zeros((1, 1), F32), False, 1)
    with pytest.raises(ValueError, match="centers"):
        sets.vlad_normalize(v, np.zeros((1, 1), F32), np.zeros((2, 4), F32),
                            np.zeros((2, 5), F32), True, 1)
    pools = kernel_module("_global_pools")
    x3 = np.zeros((1, 2, 5), F32)
    with pytest.raises(ValueError, match="index"):
        pools.scatter_gradient(x3.copy(), np.array([[0, 7], [1, 2]], np.int64),
                               np.ones(2), 1)
    with pytest.raises(ValueError, match="buffers"):
        pools.select(x3, 2, False, np.zeros(2), np.zeros((2, 2), np.int64),
                     np.zeros((1, 0), np.uint64), 2)
    soft = kernel_module("_windowed_softmax")
    x5 = np.zeros((1, 1, 1, 1, 4), F32)
    lam = np.ones((1, 1, 1, 1, 9), F32)
    with pytest.raises(ValueError, match="window"):  # 9 outputs of a 4-cell row
        soft.forward(x5, np.zeros((1, 1, 1, 1, 9), F32), (1, 1, 1), (1, 1, 2), (0, 0, 0), lam,
                     False, np.zeros((1, 2), np.intp), np.zeros((1, 8), F32), 1)


# ------------------------------------------------------------------ threads and memory
@pytest.mark.parametrize("n", [2 ** 31 - 1, 10 ** 6, 4097])
def test_absurd_thread_counts_are_refused(n):
    with pytest.raises(ValueError, match="at most 4096"):
        npool.set_num_threads(n)


def test_scratch_is_sized_by_the_threads_that_run():
    """4096 threads asked, one map of a million cells to pool: one thread's scratch (16 MiB),
    not 4096 of them (64 GiB, a MemoryError before)."""
    npool.set_num_threads(4096)
    x = np.random.rand(1, 1, 10 ** 6).astype(F32)
    np.testing.assert_allclose(npool.global_kmax_pool_forward(x, 10)[0, 0],
                               np.sort(x.ravel())[-10:].mean(), rtol=1e-6)
    assert npool.global_max_pool_forward(x)[0, 0] == x.max()


def test_selection_scratch_is_bounded(monkeypatch):
    """Maps larger than the per-thread key buffer are selected exactly, with extra passes
    (here a buffer sized for maps of 3 cells, with maps of up to 300)."""
    from npool import global_pools
    monkeypatch.setattr(global_pools, "_SELECT_CAPACITY", 3)
    rng = np.random.default_rng(5)
    for dtype in (F32, np.float64):
        for n, k in ((300, 1), (300, 150), (257, 257), (40, 7)):
            x = rng.integers(-4, 5, size=(2, 3, n)).astype(dtype)
            x[0, 0, :] = 1  # one map of ties only
            y, index = npool.global_kmax_pool_forward(x, k, return_indices=True)
            order = np.argsort(-x, axis=2, kind="stable")[..., :k]
            np.testing.assert_array_equal(index, np.sort(order, axis=2))
            np.testing.assert_allclose(y, np.take_along_axis(x, order, 2).mean(2), rtol=1e-6)
            g = npool.weldon_pool_backward(np.ones((2, 3), dtype), x, k, 2, 0.5)
            assert np.allclose(g.sum(axis=2), 1 + 0.5)
    # the buffer holds the keys of maps of up to 3 cells (and the vector select's slack),
    # whatever the maps' size
    lengths = {global_pools._Call(np.zeros((1, 1, n), F32)).buffers().shape[1]
               for n in (10, 300)}
    assert lengths == {global_pools._kernels().select_buffer_length(3, False)}
    assert lengths.pop() < 2 * 10 + 1


# ------------------------------------------------------------------ errors naming the argument
@pytest.mark.parametrize("call,error,match", [
    (lambda x: npool.soft_pool2d_forward(x, 2, stride=2 ** 63), ValueError, "stride"),
    (lambda x: npool.soft_pool2d_forward(x, 2 ** 70), ValueError, "kernel_size"),
    (lambda x: npool.maxent_pool2d_forward(x, 10 ** 400, 2), ValueError, "lam"),
    (lambda x: npool.global_lse_pool_forward(x, 10 ** 400), ValueError, "beta"),
    (lambda x: npool.weldon_pool_forward(x, 1, 1, 10 ** 400), ValueError, "alpha"),
    (lambda x: npool.global_max_pool_forward(x, keepdims="no"), TypeError, "keepdims"),
    (lambda x: npool.global_kmax_pool_forward(x, 2, return_indices=1), TypeError,
     "return_indices"),
    (lambda x: npool.global_avg_pool_backward(np.ones((1, 2), F32), x, keepdims=None),
     TypeError, "keepdims"),
])
def test_bad_scalars_raise_type_or_value_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(np.random.rand(1, 2, 4, 4).astype(F32))


@pytest.mark.parametrize("args,match", [
    (dict(x=None), "x must be"), (dict(assign=None), "assign must be"),
    (dict(centers=None), "centers must be"), (dict(grad_out=None), "grad_out must be"),
])
def test_none_arrays_of_the_set_pools_are_named(args, match):
    x = np.random.rand(2, 3, 4).astype(F32)
    a = np.full((2, 3, 2), 0.5, F32)
    kwargs = dict(grad_out=np.ones((2, 8), F32), x=x, assign=a, centers=np.zeros((4, 2), F32))
    kwargs.update(args)
    with pytest.raises(TypeError, match=match):
        npool.netvlad_pool_backward(**kwargs)
    if "grad_out" not in args:
        kwargs.pop("grad_out")
        with pytest.raises(TypeError, match=match):
            npool.netvlad_pool_forward(**kwargs)


def test_set_pools_name_a_missing_assign_and_grad_out():
    with pytest.raises(TypeError, match="assign must be"):
        npool.soft_dbow_pool_forward(None)
    with pytest.raises(TypeError, match="grad_out must be"):
        npool.context_gating_backward(None, np.ones((2, 3), F32), np.ones((3, 3), F32),
                                      np.ones(3, F32))
    with pytest.raises(TypeError, match="return_norms must be a bool"):
        npool.netrvlad_pool_forward(np.ones((1, 2, 3), F32), np.ones((1, 2, 2), F32),
                                    return_norms="yes")


def test_any_layout_of_centers_is_accepted():
    x = np.random.rand(2, 5, 4).astype(F32)
    a = np.full((2, 5, 3), 1 / 3, F32)
    c = np.random.rand(3, 4).astype(F32)
    expected = npool.netvlad_pool_forward(x, a, np.ascontiguousarray(c.T))
    np.testing.assert_array_equal(npool.netvlad_pool_forward(x, a, c.T), expected)
    grads = npool.netvlad_pool_backward(np.ones_like(expected), x, a, c.T)
    assert grads[2].shape == (4, 3)


def test_empty_batches_validate_their_arguments():
    x0 = np.zeros((0, 3, 4, 4), F32)
    with pytest.raises(TypeError, match="lam"):
        npool.maxent_pool2d_forward(x0, "no", 2)
    with pytest.raises(ValueError, match="lam of shape"):
        npool.maxent_pool2d_forward(x0, np.ones((9, 9, 9), F32), 2)
    with pytest.raises(ValueError, match="lam of shape"):
        npool.maxent_pool2d_backward(np.zeros((0, 3, 2, 2), F32), x0, np.ones((5, 1, 1), F32), 2)
    with pytest.raises(TypeError, match="indices"):
        npool.global_max_pool_backward(np.zeros((0, 3), F32), x0, indices=np.array(7.5))
    gx, glam = npool.maxent_pool2d_backward(np.zeros((0, 3, 2, 2), F32), x0,
                                            np.ones((3, 1, 1), F32), 2)
    assert gx.shape == x0.shape and glam.shape == (3, 1, 1) and not glam.any()


def test_masked_arrays_are_refused():
    x = np.ma.masked_array(np.random.rand(1, 2, 4, 4).astype(F32), mask=False)
    for call in (lambda: npool.soft_pool2d_forward(x, 2), lambda: npool.global_avg_pool_forward(x),
                 lambda: npool.maxent_pool2d_forward(x.data, np.ma.masked_array([1.0]), 2)):
        with pytest.raises(TypeError, match="MaskedArray"):
            call()


@pytest.mark.parametrize("lam", [np.nan, np.inf, -np.inf, np.array([1.0, np.nan]), 1e300])
def test_non_finite_temperatures_are_refused_like_the_torch_module(lam):
    x = np.random.rand(1, 2, 4, 4).astype(F32)  # 1e300 is not finite in float32
    with pytest.raises(ValueError, match="lam must be finite"):
        npool.maxent_pool2d_forward(x, lam, 2)
    with pytest.raises(ValueError, match="lam must be finite"):
        npool.maxent_pool2d_backward(np.ones((1, 2, 2, 2), F32), x, lam, 2)


# ------------------------------------------------------------------ extreme values
def test_maxent_when_lam_x_overflows():
    x = np.array([[[[3e38, 2e38]]]], F32)
    y = npool.maxent_pool2d_forward(x, 2.0, (1, 2))
    gx, glam = npool.maxent_pool2d_backward(np.ones((1, 1, 1, 1), F32), x, 2.0, (1, 2))
    assert y[0, 0, 0, 0] == F32(3e38)
    np.testing.assert_array_equal(gx, [[[[1, 0]]]])
    assert glam == 0
    x64 = np.array([[[[1.7e308, 1.0e308, -1.7e308]]]])
    assert npool.maxent_pool2d_forward(x64, 2.0, (1, 3))[0, 0, 0, 0] == 1.7e308
    gx, _ = npool.maxent_pool2d_backward(np.ones((1, 1, 1, 1)), x64, 2.0, (1, 3))
    np.testing.assert_array_equal(gx, [[[[1, 0, 0]]]])
    # a window whose mean is finite though the sum overflows; the same at float64's limit
    x = np.array([[[[8e37, -1.4e38, -2.75e38, -2.9e38]]]], F32)
    assert rel_err(npool.maxent_pool2d_forward(x, 0.0, (1, 4))[0, 0, 0, 0], -1.5625e38) < 1e-7
    x64 = np.array([[[[1.7e308, -1.7e308, -1.7e308]]]])
    assert rel_err(npool.maxent_pool2d_forward(x64, 0.0, (1, 3))[0, 0, 0, 0],
                   -1.7e308 / 3) < 1e-15


@pytest.mark.parametrize("lam", [1e-38, 1e-30, 0.5, 3.0])
def test_maxent_near_float32_limits_matches_mpmath(lam):
    x = np.array([[[[3.3e38, -3.3e38, 1e38, 0.0]]]], F32)
    y = npool.maxent_pool2d_forward(x, lam, (1, 4))[0, 0, 0, 0]
    values = [mpmath.mpf(float(v)) for v in x.ravel()]
    lam_f = mpmath.mpf(float(F32(lam)))
    weights = [mpmath.exp(lam_f * (v - max(values))) for v in values]
    expected = sum(w * v for w, v in zip(weights, values)) / sum(weights)
    assert abs(float(y) - float(expected)) <= 4e-7 * 3.3e38


@pytest.mark.parametrize("window", [[np.inf, 1.0], [np.inf, -np.inf], [-np.inf, -np.inf],
                                    [np.nan, 1.0], [np.inf, np.inf]])
def test_maxent_limits_of_infinite_cells_are_kept(window):
    x = np.array([[[window]]])
    with np.errstate(invalid="ignore"):
        expected = {0.0: np.mean(window), 1.0: np.max(window), -1.0: np.min(window)}
        for lam, value in expected.items():
            assert np.array_equal(npool.maxent_pool2d_forward(x, lam, (1, 2)).ravel(), [value],
                                  equal_nan=True)


def test_global_avg_and_kmax_near_the_float_maximum():
    assert npool.global_avg_pool_forward(np.full((1, 1, 64, 64), 3e38, F32))[0, 0] == F32(3e38)
    cl = np.full((1, 64, 64, 1), 3e38, F32).transpose(0, 3, 1, 2)
    assert npool.global_avg_pool_forward(cl)[0, 0] == F32(3e38)
    assert npool.global_avg_pool_forward(np.full((1, 1, 5), 1.7e308))[0, 0] == 1.7e308
    assert npool.global_kmax_pool_forward(np.full((1, 1, 2), 1.7e308), k=2)[0, 0] == 1.7e308
    x = np.array([[[1.7e308, 1.7e308, -1.7e308, -1.7e308, 0.0]]])
    assert rel_err(npool.weldon_pool_forward(x, 2, 2, 0.5)[0, 0], 0.85e308) < 1e-15


def lse_mpmath(values, beta):
    values = [mpmath.mpf(float(v)) for v in values]
    beta = mpmath.mpf(beta)
    top = max(values) if beta > 0 else min(values)
    mean_minus_one = sum(mpmath.expm1(beta * (v - top)) for v in values) / len(values)
    return float(top + mpmath.log1p(mean_minus_one) / beta)


@pytest.mark.parametrize("values,beta,dtype", [
    ([3e38, 3e38], 2.0, F32), ([4e32, 1.0], 1e6, F32), ([4e32, -4e32], 1e6, F32),
    ([0.0, 1.0], 1e300, F32), ([0.0, 1.0], 1e-300, F32), ([0.0, 1.0], 1e-6, F32),
    ([0.0, 1.0], 1e-30, F32), ([0.0, 1.0], -1e-6, F32), ([0.3, -0.2, 0.1], 1e-3, F32),
    ([1.7e308, -1.7e308], 1.0, np.float64), ([0.0, 1.0], 1e-12, np.float64),
    ([1.0, 2.0, 3.0], 5e-324, np.float64), ([0.01, 0.02], 1.0, np.float64),
])
def test_lse_is_accurate_for_every_finite_beta(values, beta, dtype):
    mpmath.mp.dps = 60
    x = np.array([[values]], dtype)
    expected = lse_mpmath(np.asarray(values, dtype), beta)
    y = npool.global_lse_pool_forward(x, beta)[0, 0]
    scale = max(abs(expected), 1e-300)
    assert abs(float(y) - expected) <= 4 * np.finfo(dtype).eps * scale, (y, expected)


def test_lse_gradient_when_beta_x_overflows():
    x = np.array([[[3e38, 2e38, 3e38]]], F32)
    g = npool.global_lse_pool_backward(np.ones((1, 1), F32), x, beta=2.0)
    np.testing.assert_array_equal(g, [[[0.5, 0, 0.5]]])


def gem_mpmath(values, p, eps):
    """y, dy/dx and dy/dp of GeM in 80 digits (dy/dp by mpmath's differentiation)."""
    mpmath.mp.dps = 80
    z = [max(mpmath.mpf(float(v)), mpmath.mpf(eps)) for v in values]
    p, n = mpmath.mpf(p), len(z)

    def gem(q):
        return (sum(c ** q for c in z) / n) ** (1 / q)

    y = gem(p)
    grad_x = [(c / y) ** (p - 1) / n if float(v) >= eps else 0 for c, v in zip(z, values)]
    return float(y), [float(g) for g in grad_x], float(mpmath.diff(gem, p))


# values, p, eps, dtype; the ulps allowed for y and dy/dp: 4 but where the problem itself
# amplifies rounding (y hundreds of orders of magnitude below the map's max: the rounding of
# log(y / M) ~ 700; dy/dp of cells 2e-7 apart, conditioned by 1 / 2e-7)
GEM_CASES = [
    ([1.0, 2.0, 3.0, 4.0], 1.0, 1e-6, np.float64, 4, 4),
    ([1.0, 2.0, 3.0, 4.0], 3.0, 1e-6, F32, 4, 4),
    ([3e38, 2e38, 1e-30, -np.inf], 100.0, 1e-6, F32, 4, 4),
    ([3e38, 1e-37, 2e38], 0.5, 1.2e-38, F32, 4, 4),
    ([1.0, 2.0, 3.0], 1e-9, 1e-6, np.float64, 4, 4),
    ([1.0, 1.5, 2.0], 1e-12, 1e-6, F32, 4, 4),
    ([0.5, 0.25, 0.125, 1.0], 0.01, 1e-6, F32, 4, 4),
    ([1e300, 1e-300, 1.7e308], 3.0, 1e-300, np.float64, 4, 4),
    ([1e300, 1e-300, 1.7e308], 1e5, 1e-300, np.float64, 4, 4),
    ([1e300, 1e-300, 1.7e308], 1e-4, 1e-300, np.float64, 400, 400),
    ([0.0, -1.0, 2.0], 1000.0, 1e-6, np.float64, 4, 4),
    ([1e-6, 2e-6, 0.0], 7.0, 1e-6, np.float64, 4, 4),
    ([5.0, 5.000001, 4.9999], 3.0, 1e-6, np.float64, 4, 20000),
    # one weight far below the others' (1 + n q_i - 1 rounds to 0 in the KL form: was NaN)
    ([500.0] * 15 + [0.0], 3.0, 1e-6, F32, 4, 4),
    ([500.0] * 15 + [0.0], 3.0, 1e-6, np.float64, 4, 4),
]


@pytest.mark.parametrize("values,p,eps,dtype,y_ulps,p_ulps", GEM_CASES)
def test_gem_is_accurate_at_extreme_p_and_values(values, p, eps, dtype, y_ulps, p_ulps):
    """GeM against mpmath: no power overflows or vanishes (p up to 1e5, cells near the float
    maximum and minimum, -inf clamped), the geometric-mean limit (p -> 0) without cancellation
    in y or dL/dp; dL/dx cell by cell to y's accuracy (+inf where it overflows, as here the
    gradient of the 1e-300 cell at p = 1e-4)."""
    x = np.array([[values]], dtype)
    rounded_eps = float(dtype(eps)) if dtype == np.float64 else float(F32(eps))
    y, grad_x, grad_p = gem_mpmath(np.asarray(values, dtype), p, rounded_eps)
    ulp = np.finfo(dtype).eps
    got_y = float(npool.global_gem_pool_forward(x, p, eps)[0, 0])
    got_x, got_p = npool.global_gem_pool_backward(np.ones((1, 1), dtype), x, p, eps)
    assert abs(got_y - y) <= y_ulps * ulp * abs(y), (got_y, y)
    for got, want in zip(got_x.ravel().astype(float), grad_x):  # inf where it overflows
        # (z / y)^(p - 1) carries p times the relative rounding of its cell and of y
        assert got == want or abs(got - want) <= (y_ulps + 2 * p) * ulp * abs(want), (got, want)
    assert abs(float(got_p) - grad_p) <= p_ulps * ulp * abs(grad_p) + 1e-300, (got_p, grad_p)


@pytest.mark.parametrize("scale,covar", [(1e18, 1.0), (1e4, 1e-9)])
def test_netfv_second_order_part_does_not_vanish(scale, covar):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2, 6, 3)) * scale).astype(F32)
    a = np.full((2, 6, 2), 0.5, F32)
    mu, cw = np.zeros((3, 2), F32), np.full((3, 2), covar, F32)
    y = npool.netfv_pool_forward(x, a, mu, cw).astype(np.float64)
    y64 = npool.netfv_pool_forward(*(v.astype(np.float64) for v in (x, a, mu, cw)))
    half = y.shape[1] // 2
    np.testing.assert_allclose(np.linalg.norm(y[:, half:], axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(y, y64, atol=1e-5)


def test_vlad_norms_of_float64_columns_beyond_1e154():
    x = np.array([[[1e200], [2e200]]])
    a = np.ones((1, 2, 1))
    y = npool.netrvlad_pool_forward(x, a)
    assert y[0, 0] == 1.0


# ------------------------------------------------------------------ layout-independent results
@pytest.mark.parametrize("lam_shape", [(), (1, 6, 1, 1), (6, 1, 1), (2, 1, 1, 1)])
def test_grad_lam_has_the_same_bits_in_either_layout(lam_shape):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 14, 10)).astype(F32) * 5
    lam = (rng.random(lam_shape) + 0.5).astype(F32)
    cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    g = rng.standard_normal((2, 6, 7, 5)).astype(F32)
    _, contiguous = npool.maxent_pool2d_backward(g, x, lam, 2)
    _, channels_last = npool.maxent_pool2d_backward(g, cl, lam, 2)
    assert np.array_equal(contiguous, channels_last)


# ------------------------------------------------------------------ npool.tf second order
def test_tf_second_order_gradients_are_the_decompositions():
    """Issue 13 made second-order gradients of npool.tf ops raise instead of returning None or
    a number that drops the path through the gradient; issue 17 gives them: the kernels' first
    derivative, differentiated through the op's decomposition (float64 differences in
    test_tf_portable.py). Here: equal to differentiating the decomposition twice."""
    tf = pytest.importorskip("tensorflow")
    import npool.tf as nt
    x = tf.constant(np.random.default_rng(0).random((1, 6, 6, 2)))
    cases = [lambda v: nt.soft_pool2d(v, 3, 2, 1),
             lambda v: nt.maxent_pool2d(v, tf.constant(2.0, v.dtype), 2),
             lambda v: nt.global_kmax_pool(v, 2),
             lambda v: nt.netrvlad_pool(tf.reshape(v, (1, 36, 2)),
                                        tf.fill((1, 36, 3), tf.constant(1 / 3, v.dtype)))]

    def second(op):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = tf.reduce_sum(op(x) ** 2)
            g = inner.gradient(y, x)
            z = tf.reduce_sum(g * tf.sin(x))
        return outer.gradient(z, x).numpy()

    for op in cases:
        got = second(op)
        with nt.portable():
            expected = second(op)
        assert np.isfinite(got).all() and np.abs(got).max() > 0
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
