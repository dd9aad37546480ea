"""Threads: npool's thread-count controls, and results that do not depend on the thread count."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings

import npool
from npool.testing.strategies import channels_last, local_pool_inputs

THREAD_COUNTS = (1, 2, 3, 4, 7)


def run_all(fn):
    """fn() with every thread count; the results must be bit-identical."""
    results = []
    for n in THREAD_COUNTS:
        npool.set_num_threads(n)
        results.append(fn())
    npool.set_num_threads(None)
    return results


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("args", [dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1),
                                  dict(kernel_size=(3, 2), stride=(2, 1), padding=1,
                                       ceil_mode=True)],
                         ids=["disjoint", "overlapping", "mixed"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bits_do_not_depend_on_thread_count(layout, args, dtype):
    rng = np.random.default_rng(0)
    # N*C = 1 included: with 7 threads and one plane the backward of overlapping windows
    # switches from adding plane by plane to gathering, which must not change a bit.
    for shape in [(4, 8, 23, 29), (1, 1, 57, 130), (1, 70, 5, 6), (1, 4, 9, 11)]:
        x = (rng.standard_normal(shape) * 10).astype(dtype)
        if layout == "channels_last":
            x = channels_last(x)
        y = npool.soft_pool2d_forward(x, **args)
        g = rng.standard_normal(y.shape).astype(dtype)
        outputs = run_all(lambda: (npool.soft_pool2d_forward(x, **args),
                                   npool.soft_pool2d_backward(g, x, **args)))
        for y_n, grad_n in outputs[1:]:
            np.testing.assert_array_equal(y_n, outputs[0][0])
            np.testing.assert_array_equal(grad_n, outputs[0][1])


@settings(max_examples=30)
@given(local_pool_inputs(dtype=np.float32))
def test_bits_do_not_depend_on_thread_count_hypothesis(problem):
    x, nd, (kernel, stride, padding, ceil_mode) = problem
    fwd = getattr(npool, f"soft_pool{nd}d_forward")
    bwd = getattr(npool, f"soft_pool{nd}d_backward")
    kw = dict(stride=stride, padding=padding, ceil_mode=ceil_mode)
    y = fwd(x, kernel, **kw)
    g = np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape)
    outputs = run_all(lambda: (fwd(x, kernel, **kw), bwd(g, x, kernel, **kw)))
    for y_n, grad_n in outputs[1:]:
        np.testing.assert_array_equal(y_n, outputs[0][0])
        np.testing.assert_array_equal(grad_n, outputs[0][1])


def test_set_and_get_num_threads():
    default = npool.get_num_threads()
    assert default >= 1
    npool.set_num_threads(3)
    assert npool.get_num_threads() == 3
    npool.set_num_threads(np.int64(1))
    assert npool.get_num_threads() == 1
    npool.set_num_threads(None)
    assert npool.get_num_threads() == default


@pytest.mark.parametrize("bad,error", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                       ("2", TypeError), (True, TypeError)])
def test_set_num_threads_rejects_bad_values(bad, error):
    with pytest.raises(error, match="set_num_threads"):
        npool.set_num_threads(bad)


def test_omp_num_threads_is_honoured():
    code = "import npool; print(npool.get_num_threads())"
    env = dict(os.environ, OMP_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "3"


def test_threadpoolctl_limits_are_honoured():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from npool._cpu import _openmp_helpers

    if not _openmp_helpers.openmp_enabled():
        pytest.skip("serial build")
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert npool.get_num_threads() == 1
    with threadpoolctl.threadpool_limits(limits=3, user_api="openmp"):
        assert npool.get_num_threads() == 3
    # npool's own setting wins over the OpenMP default
    npool.set_num_threads(2)
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert npool.get_num_threads() == 2


def test_openmp_is_built_on_linux():
    from npool import _build_info
    from npool._cpu import _openmp_helpers

    if sys.platform.startswith("linux"):
        assert _build_info.openmp and _openmp_helpers.openmp_enabled()


def test_calls_from_several_python_threads_at_once():
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((2, 16, 40, 40)).astype(np.float32) for _ in range(6)]
    expected = [(npool.soft_pool2d_forward(x, 3, 1, 1),
                 npool.soft_pool2d_backward(np.ones((2, 16, 40, 40), np.float32), x, 3, 1, 1))
                for x in inputs]
    results = [None] * len(inputs)

    def work(i):
        for _ in range(3):
            results[i] = (npool.soft_pool2d_forward(inputs[i], 3, 1, 1),
                          npool.soft_pool2d_backward(np.ones((2, 16, 40, 40), np.float32),
                                                     inputs[i], 3, 1, 1))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (y, g), (y_ref, g_ref) in zip(results, expected):
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(g, g_ref)
