"""npool.testing: its references agree with npool, check_op passes npool's own kernels (CPU
and the emulated GPU) and catches known-wrong kernels within its default example count."""
import numpy as np
import pytest
from hypothesis import given, settings

import npool
from npool import testing
from npool.testing.references import sum_to_shape, window_cells, windows

OPS = testing.OPS


def npool_op(op):
    return getattr(npool, f"{op}_forward"), getattr(npool, f"{op}_backward")


# ------------------------------------------------------------------ npool passes
@pytest.mark.parametrize("op", OPS)
def test_check_op_passes_npool_on_the_cpu(op):
    testing.check_op(op, *npool_op(op))


@pytest.mark.parametrize("op", OPS)
def test_check_op_passes_npool_on_the_emulated_gpu(op, gpu):
    forward, backward = npool_op(op)
    # global pools on the GPU need the spatial axes as one strided run (a documented limit)
    layouts = ("contiguous", "channels_last") if op.startswith(("global", "weldon")) else \
        ("contiguous", "channels_last", "strided")
    testing.check_op(op, forward, backward, max_examples=15, from_array=gpu.to_device,
                     to_array=gpu.read, dtypes=("float16", "float32", "float64"),
                     layouts=layouts)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_check_op_passes_npool_in_half_precision(op, dtype):
    testing.check_op(op, *npool_op(op), max_examples=30, dtypes=(dtype,))


@pytest.mark.parametrize("op", OPS)
def test_problems_draw_what_the_references_take(op):
    @settings(max_examples=20, deadline=None)
    @given(testing.problems(op, dtypes=("float16", "float32", "float64")))
    def run(problem):
        assert list(problem.inputs) and problem.grad_out is not None
        testing.assert_close(problem.reference("forward"), problem)
        testing.assert_close(problem.reference("backward"), problem, "backward")
        assert repr(problem).startswith(f"Problem({op!r})")
    run()


def test_public_api_and_errors():
    forward, backward = testing.reference("soft_pool2d")
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4))
    np.testing.assert_allclose(forward(x, 2), npool.soft_pool2d_forward(x, 2), rtol=1e-12)
    with pytest.raises(ValueError, match="unknown op 'soft_pool4d'"):
        testing.reference("soft_pool4d")
    with pytest.raises(ValueError, match="dtypes"):
        testing.problems("soft_pool2d", dtypes=("int32",))
    with pytest.raises(ValueError, match="layouts"):
        testing.problems("soft_pool2d", layouts=("fortran",))
    problem = testing.Problem("global_avg_pool", {"x": x}, {}, np.ones((1, 2)))
    with pytest.raises(AssertionError, match=r"output\[0, 1\] is .*off by"):
        testing.assert_close(npool.global_avg_pool_forward(x) + [[0, 1e-3]], problem)
    with pytest.raises(AssertionError, match="shape"):
        testing.assert_close(np.zeros((2, 2)), problem)
    with pytest.raises(ValueError, match="which"):
        testing.assert_close(np.zeros((1, 2)), problem, "sideways")


def test_check_op_reports_a_kernel_that_raises_or_writes_its_input():
    def raising(x, kernel_size, stride=None, padding=0, ceil_mode=False):
        if x.ndim == 3:
            raise IndexError("unbatched input")
        return npool.soft_pool1d_forward(x, kernel_size, stride, padding, ceil_mode)

    with pytest.raises(AssertionError, match="raised IndexError"):
        testing.check_op("soft_pool1d", raising, dilations=False)

    def writing(x, kernel_size, stride=None, padding=0, ceil_mode=False):
        y = npool.soft_pool1d_forward(x, kernel_size, stride, padding, ceil_mode)
        x[...] = 0
        return y

    with pytest.raises(AssertionError, match="modified its input x"):
        testing.check_op("soft_pool1d", writing, dilations=False)


# ------------------------------------------------------------------ known-wrong kernels
def _windows_of(x, nd, kernel_size, stride, padding, ceil_mode):
    return windows(x.shape[-nd:], kernel_size, stride, padding, ceil_mode)


def softpool_backward_without_the_x_minus_y_term(grad_out, x, kernel_size, stride=None,
                                                 padding=0, ceil_mode=False):
    """The original SoftPool CUDA backward: dL/dx_i = sum_o g_o w_{o,i}, no (x_i - y_o)."""
    grad = np.zeros(x.shape)
    for out_index, window in _windows_of(x, 2, kernel_size, stride, padding, ceil_mode):
        cells = window_cells(x.astype(np.float64), window, 2)
        w = np.exp(cells - cells.max(axis=-1, keepdims=True))
        w /= w.sum(axis=-1, keepdims=True)
        g = grad_out[(Ellipsis,) + out_index][..., None]
        grad[(Ellipsis,) + window] += (g * w).reshape(grad[(Ellipsis,) + window].shape)
    return grad.astype(x.dtype)


def _softpool_by_window(x, kernel_size, stride, padding, ceil_mode, weights):
    """A composite SoftPool: sum w x / sum w over each window, ``w = weights(cells)``."""
    y = npool.soft_pool2d_forward(x, kernel_size, stride, padding, ceil_mode).copy()
    for out_index, window in _windows_of(x, 2, kernel_size, stride, padding, ceil_mode):
        cells = window_cells(x, window, 2)
        with np.errstate(all="ignore"):
            w = weights(cells)
            y[(Ellipsis,) + out_index] = (w * cells).sum(axis=-1) / w.sum(axis=-1)
    return y


def softpool_without_max_subtraction(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """A composite SoftPool: sum e^x x / sum e^x, exponentials taken as they are."""
    return _softpool_by_window(x, kernel_size, stride, padding, ceil_mode, np.exp)


def softpool_subtracting_the_arrays_maximum(x, kernel_size, stride=None, padding=0,
                                            ceil_mode=False):
    """A SoftPool stable against overflow but not underflow: it subtracts the maximum of the
    whole array, not of each window (computing in float64), so a window about 745 below another
    has all its weights 0 and gives 0/0."""
    top = float(x.max()) if x.size else 0.0
    return _softpool_by_window(x, kernel_size, stride, padding, ceil_mode,
                               lambda cells: np.exp(cells.astype(np.float64) - top))


def kmax_backward_with_another_tie_order(grad_out, x, k=1, keepdims=False,
                                         return_indices=False, indices=None, *,
                                         rounding="floor"):
    """k-max whose selection among equal values depends on the sort: here the last of the tied
    cells instead of the first."""
    n = int(np.prod(x.shape[2:]))
    count = npool.global_kmax_pool_forward(x, k, return_indices=True, rounding=rounding)[1]
    count = count.shape[-1]
    grad = np.zeros(x.shape[:2] + (n,), x.dtype)
    flat = x.reshape(x.shape[:2] + (n,))
    g = np.asarray(grad_out).reshape(x.shape[:2])
    for a, b in np.ndindex(*x.shape[:2]):
        order = n - 1 - np.argsort(-flat[a, b][::-1], kind="stable")  # ties: highest index
        grad[a, b, order[:count]] += g[a, b] / count
    return grad.reshape(x.shape)


def netvlad_ignoring_the_mask(x, assign, centers, mask=None, return_norms=False, matmul=None):
    return npool.netvlad_pool_forward(x, assign, centers)


def netvlad_backward_ignoring_the_mask(grad_out, x, assign, centers, mask=None, **_):
    return npool.netvlad_pool_backward(grad_out, x, assign, centers)


def maxent_backward_with_a_cancelling_grad_lam(grad_out, x, lam, kernel_size, stride=None,
                                               padding=0, ceil_mode=False):
    """grad_lam = g (E[x^2] - y^2) in the input's dtype, which cancels: the right grad_x."""
    grad_x, _ = npool.maxent_pool2d_backward(grad_out, x, lam, kernel_size, stride, padding,
                                             ceil_mode)
    lam_full = np.broadcast_to(np.asarray(lam, x.dtype), grad_out.shape)
    per_output = np.zeros(grad_out.shape, x.dtype)
    for out_index, window in _windows_of(x, 2, kernel_size, stride, padding, ceil_mode):
        cells = window_cells(x, window, 2)
        z = lam_full[(Ellipsis,) + out_index][..., None] * cells
        w = np.exp(z - z.max(axis=-1, keepdims=True))
        w /= w.sum(axis=-1, keepdims=True)
        y = (w * cells).sum(axis=-1)
        second = (w * cells * cells).sum(axis=-1)
        per_output[(Ellipsis,) + out_index] = grad_out[(Ellipsis,) + out_index] * (second - y * y)
    return grad_x, sum_to_shape(per_output.astype(np.float64), np.shape(lam)).astype(
        np.asarray(lam).dtype if isinstance(lam, np.ndarray) else np.float64)


WRONG = {
    "SoftPool CUDA backward without w (x - y)": (
        "soft_pool2d", npool.soft_pool2d_forward, softpool_backward_without_the_x_minus_y_term),
    "SoftPool without max subtraction": ("soft_pool2d", softpool_without_max_subtraction, None),
    "SoftPool subtracting the array's maximum": (
        "soft_pool2d", softpool_subtracting_the_arrays_maximum, None),
    "k-max breaking ties by another order": (
        "global_kmax_pool", npool.global_kmax_pool_forward, kmax_backward_with_another_tie_order),
    "NetVLAD letting masked samples through": (
        "netvlad_pool", netvlad_ignoring_the_mask, netvlad_backward_ignoring_the_mask),
    "Max-Ent grad_lam as E[x^2] - y^2": (
        "maxent_pool2d", npool.maxent_pool2d_forward, maxent_backward_with_a_cancelling_grad_lam),
}


@pytest.mark.parametrize("name", list(WRONG))
@pytest.mark.parametrize("run", range(3))
def test_check_op_catches_a_known_wrong_kernel(name, run):
    """Within the default 100 examples, in every run (three independent runs each)."""
    op, forward, backward = WRONG[name]
    with pytest.raises(AssertionError) as caught:
        # the default 100 examples (the wrong kernels take no dilation=)
        testing.check_op(op, forward, backward, shrink=False, dilations=False)
    assert f"Problem({op!r})" in str(caught.value)


def test_a_failure_is_shrunk_to_a_small_problem():
    with pytest.raises(AssertionError) as caught:
        testing.check_op("soft_pool2d", *WRONG["SoftPool CUDA backward without w (x - y)"][1:],
                         dilations=False)
    assert "x: float" in str(caught.value) and "C-contiguous" in str(caught.value)


def test_the_readme_example_runs(capsys):
    """The docs' "Test your own kernel" block (docs/testing.md): a torch composite SoftPool
    passes check_op and a variant without max subtraction is caught."""
    pytest.importorskip("torch")
    import pathlib
    import re
    page = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "testing.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    exec(compile(block, "docs/testing.md", "exec"), {"__name__": "readme"})
    assert "soft_pool2d forward: output" in capsys.readouterr().out


def test_references_work_without_hypothesis():
    import subprocess
    import sys
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "import numpy as np, npool.testing as t\n"
            "f, b = t.reference('global_avg_pool'); print(f(np.ones((1, 2, 3)))[0, 1])\n"
            "try:\n    t.problems('global_avg_pool')\n"
            "except ImportError as e:\n    print(e)\n"
            "try:\n    t.check_op('global_avg_pool', f)\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == "1.0" and all("need hypothesis" in line for line in out[1:]), out
