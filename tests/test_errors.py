"""Bad input: a clear TypeError or ValueError naming the argument, never a crash."""
import numpy as np
import pytest

import npool

x2d = np.zeros((2, 3, 6, 6), np.float32)


def fwd(x=x2d, kernel_size=2, **kw):
    return npool.soft_pool2d_forward(x, kernel_size, **kw)


@pytest.mark.parametrize("shape", [(6,), (6, 6), (1, 2, 3, 6, 6), (1, 1, 1, 1, 1, 1)])
def test_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"x must be 3-D \(C, H, W\) or 4-D \(N, C, H, W\)"):
        fwd(np.zeros(shape, np.float32))


@pytest.mark.parametrize("nd,shape", [(1, (4,)), (1, (1, 2, 3, 4)), (3, (2, 4, 4)),
                                      (3, (1, 1, 1, 4, 4, 4))])
def test_wrong_rank_1d_3d(nd, shape):
    with pytest.raises(ValueError, match=f"x must be {nd + 1}-D"):
        getattr(npool, f"soft_pool{nd}d_forward")(np.zeros(shape), 1)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, bool, np.complex64,
                                   np.complex128, object, np.longdouble])
def test_unsupported_dtypes(dtype):
    with pytest.raises(TypeError, match="x must have dtype float16, bfloat16, float32 or float64"):
        fwd(np.zeros((1, 1, 4, 4), dtype))


@pytest.mark.parametrize("x", [[[[1.0, 2.0]]], 3.0, None, "abc"])
def test_non_array_input(x):
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        fwd(x)


@pytest.mark.parametrize("kernel_size,error,message", [
    (0, ValueError, "kernel_size must be >= 1"),
    (-1, ValueError, "kernel_size must be >= 1"),
    ((2, 0), ValueError, "kernel_size must be >= 1"),
    ((2,), ValueError, "kernel_size must be an int or a tuple of 2 ints"),
    ((2, 2, 2), ValueError, "kernel_size must be an int or a tuple of 2 ints"),
    (2.0, TypeError, "kernel_size must be an int or a tuple of 2 ints"),
    ((2, 1.5), TypeError, "kernel_size must be an int or a tuple of 2 ints"),
    (float("nan"), TypeError, "kernel_size"),
    (True, TypeError, "kernel_size"),
    (None, TypeError, "kernel_size"),
    ("2", TypeError, "kernel_size"),
])
def test_bad_kernel_size(kernel_size, error, message):
    with pytest.raises(error, match=message):
        fwd(kernel_size=kernel_size)


@pytest.mark.parametrize("stride,error,message", [
    (0, ValueError, "stride must be >= 1"),
    ((1, -1), ValueError, "stride must be >= 1"),
    ((1, 1, 1), ValueError, "stride must be an int or a tuple of 2 ints"),
    (1.0, TypeError, "stride must be an int"),
])
def test_bad_stride(stride, error, message):
    with pytest.raises(error, match=message):
        fwd(stride=stride)


@pytest.mark.parametrize("kernel_size,padding,error,message", [
    (2, -1, ValueError, "padding must be >= 0"),
    (2, 2, ValueError, "padding must be at most half of kernel_size"),
    (3, (1, 2), ValueError, "padding must be at most half of kernel_size"),
    ((1, 3), 1, ValueError, "padding must be at most half of kernel_size"),
    (2, (0, 0, 0), ValueError, "padding must be an int or a tuple of 2 ints"),
    (2, 0.5, TypeError, "padding must be an int"),
])
def test_bad_padding(kernel_size, padding, error, message):
    with pytest.raises(error, match=message):
        fwd(kernel_size=kernel_size, padding=padding)


def test_bad_ceil_mode():
    with pytest.raises(TypeError, match="ceil_mode must be a bool"):
        fwd(ceil_mode="yes")


@pytest.mark.parametrize("shape,kernel_size,padding", [((1, 1, 1, 6), 2, 0),
                                                       ((1, 1, 6, 3), (2, 5), (0, 0)),
                                                       ((1, 1, 6, 2), 5, 1)])
def test_input_smaller_than_kernel(shape, kernel_size, padding):
    with pytest.raises(ValueError, match="input is smaller than kernel_size on spatial axis"):
        fwd(np.zeros(shape, np.float32), kernel_size, padding=padding)


@pytest.mark.parametrize("shape", [(2, 0, 4, 4), (2, 3, 0, 4), (2, 3, 4, 0), (0, 4, 4)])
def test_zero_size_axes(shape):
    with pytest.raises(ValueError, match="x must have non-zero channel and spatial sizes"):
        fwd(np.zeros(shape, np.float32))


def test_grad_out_wrong_shape():
    y = fwd()
    for bad in (np.zeros((2, 3, 3, 4), np.float32), y[0], np.zeros((2, 3, 6, 6), np.float32)):
        with pytest.raises(ValueError, match=r"grad_out must have the forward output's shape \(2, 3, 3, 3\)"):
            npool.soft_pool2d_backward(bad, x2d, 2)


def test_grad_out_wrong_dtype():
    y = fwd()
    with pytest.raises(TypeError, match="grad_out must have the dtype of x"):
        npool.soft_pool2d_backward(y.astype(np.float64), x2d, 2)
    with pytest.raises(TypeError, match="grad_out must have the dtype of x"):
        npool.soft_pool2d_backward(y.astype(np.int32), x2d, 2)


def test_grad_out_not_an_array():
    with pytest.raises(TypeError, match="grad_out must be a numpy.ndarray"):
        npool.soft_pool2d_backward(fwd().tolist(), x2d, 2)


def test_backward_checks_x_too():
    with pytest.raises(TypeError, match="x must have dtype"):
        npool.soft_pool2d_backward(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 4, 4), np.int64), 2)


class FakeGpuArray:
    """Stands for a CUDA tensor: npool dispatches on __cuda_array_interface__."""
    __cuda_array_interface__ = {"shape": (1, 1, 4, 4), "typestr": "<f4",
                                "data": (0x7F0000000000, False), "version": 3}


def test_mixed_devices_are_a_type_error():
    with pytest.raises(TypeError, match="same device"):
        npool.soft_pool2d_backward(FakeGpuArray(), np.zeros((1, 1, 4, 4), np.float32), 2)
    with pytest.raises(TypeError, match="same device"):
        npool.soft_pool2d_backward(np.zeros((1, 1, 2, 2), np.float32), FakeGpuArray(), 2)


@pytest.mark.parametrize("p,error,message", [
    (-1.0, ValueError, "p must be positive and finite"),
    (0.0, ValueError, "p must be positive and finite"),
    (float("nan"), ValueError, "p must be positive and finite"),
    (np.array([3.0, -2.0, 3.0]), ValueError, "p must be positive and finite"),
    (np.ones(4), ValueError, r"p of shape \(4,\) does not broadcast to the maps' shape"),
    (np.ones((2, 3, 1)), ValueError, "p of shape .* does not broadcast"),
    (True, TypeError, "p must be a real number or a real numpy array"),
    ("3", TypeError, "p must be a real number or a real numpy array"),
    (np.ma.masked_array([3.0]), TypeError, "p must be a plain numpy.ndarray"),
])
def test_gem_exponent_errors_name_p(p, error, message):
    x = np.ones((2, 3, 4, 4), np.float32)
    with pytest.raises(error, match=message):
        npool.global_gem_pool_forward(x, p)
    with pytest.raises(error, match=message):
        npool.global_gem_pool_backward(np.ones((2, 3), np.float32), x, p)


@pytest.mark.parametrize("eps,error", [(0.0, ValueError), (-1e-6, ValueError),
                                       (1e-40, ValueError), (float("inf"), ValueError),
                                       ("a", TypeError), (None, TypeError)])
def test_gem_eps_errors_name_eps(eps, error):
    """eps must be a normal positive number of the dtype the pool computes in (1e-40 is
    subnormal in float32)."""
    with pytest.raises(error, match="eps must"):
        npool.global_gem_pool_forward(np.ones((1, 2, 3), np.float32), 3.0, eps)


def test_gem_backward_checks_its_outputs():
    x = np.ones((2, 3, 4), np.float32)
    g = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"out\[1\] must have the result's shape \(3,\)"):
        npool.global_gem_pool_backward(g, x, np.ones(3), out=(None, np.empty(4, np.float32)))
    with pytest.raises(TypeError, match=r"out\[1\] must have dtype float32"):
        npool.global_gem_pool_backward(g, x, np.ones(3), out=(None, np.empty(3)))
    p = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="out\\[1\\] must not share memory with p"):
        npool.global_gem_pool_backward(g, x, p, out=(None, p))
