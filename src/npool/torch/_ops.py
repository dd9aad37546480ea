"""npool's ops registered with ``torch.library``: one forward and one backward custom op per op
family, their fake kernels, autograd and autocast, and the functional forms."""
import torch

import npool

from .. import _checks
from ._tensors import from_core, to_core

# ------------------------------------------------------------------ SoftPool
_SOFT_POOL = {1: (npool.soft_pool1d_forward, npool.soft_pool1d_backward),
              2: (npool.soft_pool2d_forward, npool.soft_pool2d_backward),
              3: (npool.soft_pool3d_forward, npool.soft_pool3d_backward)}


def _layout_of(x):
    """The memory layout npool gives outputs of x (batched): its own when it is C-contiguous or
    channels-last, else C order (as the NumPy and GPU cores do)."""
    return _checks.layout_of_strides(tuple(x.shape), x.stride()) or "contiguous"


def _empty_in_layout(x, shape, nd):
    """A new tensor of ``shape`` with the strides npool's cores give for input x of an
    ``nd``-d pool (batched or not)."""
    batched = x.dim() == nd + 2
    layout = _layout_of(x if batched else x.unsqueeze(0))
    full = shape if batched else (1, *shape)
    strides = _checks.dense_strides(full, layout)
    return x.new_empty_strided(shape, strides if batched else strides[1:])


@torch.library.custom_op("npool::soft_pool", mutates_args=())
def _soft_pool(x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
               ceil_mode: bool) -> torch.Tensor:
    forward, _ = _SOFT_POOL[len(kernel_size)]
    return from_core(forward(to_core(x), kernel_size, stride, padding, ceil_mode), x)


@_soft_pool.register_fake
def _(x, kernel_size, stride, padding, ceil_mode):
    nd = len(kernel_size)
    args = _checks.WindowArgs(nd, tuple(kernel_size), tuple(stride), tuple(padding), ceil_mode)
    if x.dim() not in (nd + 1, nd + 2):
        raise ValueError(f"x must be {nd + 1}-D or {nd + 2}-D for a {nd}-d pool, got {x.dim()}-D")
    out = tuple(x.shape[:-nd]) + args.output_size(tuple(x.shape[-nd:]))
    return _empty_in_layout(x, out, nd)


@torch.library.custom_op("npool::soft_pool_backward", mutates_args=())
def _soft_pool_backward(grad_out: torch.Tensor, x: torch.Tensor, kernel_size: list[int],
                        stride: list[int], padding: list[int], ceil_mode: bool) -> torch.Tensor:
    _, backward = _SOFT_POOL[len(kernel_size)]
    grad_out = grad_out.to(x.dtype)
    return from_core(backward(to_core(grad_out), to_core(x), kernel_size, stride, padding,
                              ceil_mode), x)


@_soft_pool_backward.register_fake
def _(grad_out, x, kernel_size, stride, padding, ceil_mode):
    return _empty_in_layout(x, tuple(x.shape), len(kernel_size))


def _soft_pool_setup_context(ctx, inputs, output):
    x, *window = inputs
    ctx.save_for_backward(x)
    ctx.window = window


def _soft_pool_autograd(ctx, grad_out):
    x, = ctx.saved_tensors
    return (_soft_pool_backward(grad_out, x, *ctx.window),) + (None,) * len(ctx.window)


_soft_pool.register_autograd(_soft_pool_autograd, setup_context=_soft_pool_setup_context)
torch.library.register_autocast("npool::soft_pool", "cuda", torch.float16)


def _window_lists(nd, kernel_size, stride, padding):
    """kernel_size, stride and padding as lists of nd ints (stride None: the kernel)."""
    kernel = list(_checks.int_tuple(kernel_size, "kernel_size", nd, 1))
    stride = kernel if stride is None else list(_checks.int_tuple(stride, "stride", nd, 1))
    return kernel, stride, list(_checks.int_tuple(padding, "padding", nd, 0))


def _make_soft_pool(nd):
    def soft_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False):
        kernel, stride, padding = _window_lists(nd, kernel_size, stride, padding)
        if not isinstance(ceil_mode, bool):
            raise TypeError(f"ceil_mode must be a bool, got {type(ceil_mode).__name__}")
        return _soft_pool(x, kernel, stride, padding, ceil_mode)

    soft_pool.__name__ = soft_pool.__qualname__ = f"soft_pool{nd}d"
    soft_pool.__doc__ = f"""SoftPool over {nd} spatial axes, differentiable (npool.soft_pool{nd}d_forward).

    ``x``: a CPU or CUDA tensor ``(N, C, *{nd} spatial)`` or ``(C, *spatial)``, float16/32/64;
    the arguments and output size are those of ``torch.nn.functional.max_pool{nd}d`` (padded
    cells are left out of the windows). The output keeps x's memory layout.
    """
    return soft_pool


soft_pool1d = _make_soft_pool(1)
soft_pool2d = _make_soft_pool(2)
soft_pool3d = _make_soft_pool(3)
