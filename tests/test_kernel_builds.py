"""The CPU kernels' builds (baseline, x86-64-v3, x86-64-v4) and paths (the vectorised lines of
_softmax_lines.h, the generic windowed-softmax kernel) give the same bits, whatever runs here.

Every build this machine runs is compared in one process (``npool._cpu._ISA`` picks the module
``kernel_module`` returns), with the vector lines on and off, on windows the vector lines serve
(2 to 9 cells, steps 1, 2 and others, long rows and many channels, both layouts) and on
non-finite and overflowing windows, which they hand back to the generic kernel.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npool
import npool._cpu as cpu
from npool._cpu import available_isas, kernel_module
from npool.testing.strategies import channels_last

BUILDS = [(isa, vector) for isa in available_isas() for vector in (True, False)]


def each_build(fn):
    """fn() under every kernel build this machine runs, vector lines on and off."""
    saved = cpu._ISA
    results = []
    try:
        for isa, vector in BUILDS:
            cpu._ISA = isa
            kernel_module("_windowed_softmax").use_vector_lines(vector)
            results.append(((isa, vector), fn()))
    finally:
        cpu._ISA = saved
        for isa in available_isas():
            kernel_module("_windowed_softmax", isa).use_vector_lines(True)
    return results


def assert_same_bits(results):
    (first, expected), *others = results
    for build, got in others:
        for a, b in zip(expected, got):
            np.testing.assert_array_equal(a, b, err_msg=f"{build} differs from {first}")
            # equal also as bits: the sign of zeros, the NaN payload aside
            assert np.array_equal(np.signbit(a), np.signbit(b)) or np.isnan(a).any()


def forward_backward(x, nd, lam, window):
    """Max-Ent (or SoftPool when lam is None) forward, and backward with a fixed grad_out."""
    if lam is None:
        y = getattr(npool, f"soft_pool{nd}d_forward")(x, **window)
        g = np.cos(np.arange(y.size)).reshape(y.shape).astype(x.dtype)
        return y, getattr(npool, f"soft_pool{nd}d_backward")(g, x, **window)
    y = getattr(npool, f"maxent_pool{nd}d_forward")(x, lam, **window)
    g = np.cos(np.arange(y.size)).reshape(y.shape).astype(x.dtype)
    return (y,) + tuple(getattr(npool, f"maxent_pool{nd}d_backward")(g, x, lam, **window))


def test_the_selected_build_is_the_best_this_cpu_runs():
    assert cpu.selected_isa() == available_isas()[0]
    assert available_isas()[-1] == "baseline"


@pytest.mark.parametrize("isa", ["baseline", "x86-64-v3", "x86-64-v4"])
def test_npool_cpu_isa_picks_a_build(isa):
    """NPOOL_CPU_ISA asks for a build: that one runs, or a clear error where it cannot."""
    env = dict(os.environ, NPOOL_CPU_ISA=isa)
    code = "from npool._cpu import selected_isa; print(selected_isa())"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if isa in available_isas():
        assert run.returncode == 0 and run.stdout.strip() == isa
    else:
        assert run.returncode != 0 and f"no {isa} kernels" in run.stderr


def test_npool_cpu_isa_refuses_an_unknown_build():
    env = dict(os.environ, NPOOL_CPU_ISA="avx9000")
    run = subprocess.run([sys.executable, "-c", "import npool"], env=env,
                         capture_output=True, text=True)
    assert run.returncode != 0 and "NPOOL_CPU_ISA must be one of" in run.stderr


WINDOWS = [  # (nd, kernel_size, stride, padding): what the vector lines serve, and around it
    (2, 2, 2, 0), (2, 3, 2, 1), (2, 3, 3, 0), (2, 2, 1, 0), (2, 3, 1, 1), (2, (3, 2), (2, 1), 1),
    (1, 2, 2, 0), (1, 3, 2, 1), (1, 3, 3, 0), (3, 2, 2, 0), (3, (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    (2, 4, 4, 0),  # 16 cells: the generic kernel only
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_every_build_and_path_gives_the_same_bits(window, dtype):
    nd, kernel_size, stride, padding = window
    rng = np.random.default_rng(5)
    spatial = {1: (75,), 2: (9, 70), 3: (4, 6, 37)}[nd]
    huge = np.finfo(dtype).max / 4
    for channels in (3, 37):
        x = (rng.standard_normal((2, channels) + spatial) * 10).astype(dtype)
        flat = x.reshape(-1)
        flat[rng.integers(0, flat.size, 6)] = [np.nan, np.inf, -np.inf, huge, -huge, 1e4]
        flat[rng.integers(0, flat.size, 40)] = 2.5  # ties
        per_channel = rng.uniform(-3, 3, (2, channels) + (1,) * nd).astype(dtype)
        for layout_x in (x, channels_last(x)):
            for lam in (None, 1.0, 0.37, per_channel):
                window_kw = dict(kernel_size=kernel_size, stride=stride, padding=padding)
                assert_same_bits(each_build(lambda: forward_backward(layout_x, nd, lam,
                                                                     window_kw)))


@st.composite
def vector_line_problems(draw):
    """Inputs with long lines (rows of up to 70 outputs, up to 40 channels), windows of 1 to 3
    cells per axis, any stride and padding, values with ties and extremes."""
    nd = draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    lengths = [draw(st.integers(k, k + 3)) for k in kernel[:-1]]
    lengths.append(draw(st.integers(kernel[-1], 70 if nd < 3 else 40)))
    channels = draw(st.integers(1, 40))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = (draw(st.integers(1, 2)), channels) + tuple(lengths)
    # The bulk from a seeded generator (a drawn array this large exceeds hypothesis' entropy
    # budget), then drawn cells set to ties and extremes.
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = (rng.standard_normal(shape) * draw(st.sampled_from([1.0, 30.0]))).astype(dtype)
    special = st.sampled_from([np.nan, np.inf, -np.inf, 3e38, -3e38, 2.0, 0.0, -0.0])
    for index, value in draw(st.lists(st.tuples(st.integers(0, x.size - 1), special),
                                      max_size=8)):
        x.reshape(-1)[index] = value
    if draw(st.booleans()):
        x = channels_last(x)
    lam = draw(st.sampled_from([None, 1.0, -0.5, 2.0, "per channel"]))
    if lam == "per channel":
        lam = np.linspace(-2, 2, channels, dtype=dtype).reshape((channels,) + (1,) * nd)
    window = dict(kernel_size=kernel, stride=stride, padding=padding,
                  ceil_mode=draw(st.booleans()))
    return x, nd, lam, window


@settings(max_examples=60, deadline=None)
@given(vector_line_problems())
def test_every_build_and_path_gives_the_same_bits_hypothesis(problem):
    x, nd, lam, window = problem
    assert_same_bits(each_build(lambda: forward_backward(x, nd, lam, window)))


@pytest.mark.parametrize("window", [(2, 1, 0), (3, 1, 1), (3, 2, 1), (2, 2, 0), (3, 3, 0)], ids=str)
def test_every_line_length_gives_the_same_bits(window):
    """Rows of every length modulo the vector width: the last vector of a line overlaps the one
    before it by any number of lanes (an adding line adds only the new ones)."""
    kernel_size, stride, padding = window
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        for width in range(40, 74):
            x = (rng.standard_normal((1, 2, 5, width)) * 5).astype(dtype)
            for lam in (None, 0.37):
                window_kw = dict(kernel_size=kernel_size, stride=stride, padding=padding)
                assert_same_bits(each_build(lambda: forward_backward(x, 2, lam, window_kw)))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_build_gives_the_same_bits_for_the_global_pools(layout, dtype):
    """The global pools' kernels (the channels-last maximum on vectors of channels included;
    GeM's float log and exponentials)."""
    rng = np.random.default_rng(9)
    for shape in [(2, 70, 5, 7), (3, 16, 40, 41), (1, 600, 3, 3)]:
        x = (rng.standard_normal(shape) * 4).astype(dtype)
        flat = x.reshape(-1)
        flat[rng.integers(0, flat.size, 5)] = [np.nan, np.inf, -np.inf, 2.5, 2.5]
        x = channels_last(x) if layout == "channels_last" else x
        g = np.cos(np.arange(shape[0] * shape[1])).reshape(shape[:2]).astype(dtype)

        def pools():
            y, index = npool.global_max_pool_forward(x, return_indices=True)
            k, kindex = npool.global_kmax_pool_forward(x, 3, return_indices=True)
            p = np.linspace(1.0, 9.0, x.shape[1])  # GeM: the float kernel (p >= 1)
            return (y, index, npool.global_avg_pool_forward(x),
                    npool.global_lse_pool_forward(x, 0.5),
                    npool.global_lse_pool_backward(g, x, 0.5), k, kindex,
                    npool.global_kmax_pool_backward(g, x, 3, indices=kindex),
                    npool.global_gem_pool_forward(x, p),
                    *npool.global_gem_pool_backward(g, x, p),
                    npool.global_gem_pool_forward(x, 0.5))

        results = each_build(pools)
        assert_same_bits([(build, r) for build, r in results if build[1]])


@st.composite
def selection_problems(draw):
    """Float32 maps for the selections: channels-last blocks of 16 channels and a partial one,
    maps shorter and longer than a vector and than a 16-position tile, ties, signed zeros,
    NaN and infinities, sorted maps (the quickselect's pivots at their worst), k and kmin
    anywhere in 1..n."""
    channels = draw(st.sampled_from([1, 3, 16, 17, 33]))
    spatial = draw(st.lists(st.integers(1, 24), min_size=1, max_size=2))
    shape = (draw(st.integers(1, 2)), channels) + tuple(spatial)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(shape).astype(np.float32)
    kind = draw(st.sampled_from(["normal", "ties", "special", "zeros", "sorted", "reversed"]))
    if kind == "ties":
        x = np.round(x * 2) / 2
    elif kind == "special":
        x.reshape(-1)[rng.integers(0, x.size, 5)] = [np.nan, np.inf, -np.inf, -0.0, 0.0]
    elif kind == "zeros":
        x[...] = 0
        x.reshape(-1)[::3] = -0.0
    elif kind in ("sorted", "reversed"):
        x = np.sort(x.reshape(shape[0], channels, -1), axis=-1).reshape(shape)
        x = x[..., ::-1].copy() if kind == "reversed" else x
    if draw(st.booleans()):
        x = channels_last(x)
    n = int(np.prod(spatial))
    return x, draw(st.integers(1, n)), draw(st.integers(0, n))


@given(selection_problems())
@settings(max_examples=80, deadline=None)
def test_every_build_selects_the_same_cells(problem):
    """k-max and WELDON on every build: the vector select (_select_small.h, the AVX-512 build's
    quickselect and its channels-last key tiles) against the radix select of the others."""
    x, k, kmin = problem
    g = np.cos(np.arange(x.shape[0] * x.shape[1])).reshape(x.shape[:2]).astype(np.float32)

    def selections():
        y, index = npool.weldon_pool_forward(x, k, kmin, 0.7, return_indices=True)
        top, top_index = npool.global_kmax_pool_forward(x, k, return_indices=True)
        return (y, index, top, top_index, npool.global_kmax_pool_forward(x, k),
                npool.weldon_pool_backward(g, x, k, kmin, 0.7),
                npool.global_kmax_pool_backward(g, x, k))

    assert_same_bits([(build, r) for build, r in each_build(selections) if build[1]])
