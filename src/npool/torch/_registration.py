"""What every family of npool.torch's ops registers with (``_local_ops``, ``_global_ops``,
``_set_ops``): autocast for the kernels of a family of the op table, second derivatives through
an op's decomposition, the two kinds of vmap rule, and the layout, window and export helpers
they share. No op of its own."""
import torch
import torch._functorch.config

from .. import _checks, _op_table

# PyTorch's Inductor (2.13 and 2.14) cannot compile a graph whose partitioner saves a view with
# dynamic strides for the backward ("TypeError: cannot determine truth value of Relational"
# under torch.compile(dynamic=True)): npool's backward ops take their input, and an input made
# by a view inside the compiled function (NHWC permuted to NCHW, Keras' torch backend, a GFGP
# branch) would be saved as such a view - PyTorch's own conv2d fails the same way. Views cost
# nothing to recompute (PyTorch's note on this flag: "generally a good idea"), so npool.torch
# has the partitioner recompute them; docs/frameworks/pytorch.md says so.
torch._functorch.config.recompute_views = True


def _cast_for_autocast(value, device_type, dtype):
    """``value`` with its float32 (and other non-float64 floating) tensors on ``device_type``
    cast to ``dtype``: autocast's rule for ops that run in lower precision."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and value.device.type == device_type \
                and value.dtype != torch.float64:
            return value.to(dtype)
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_for_autocast(v, device_type, dtype) for v in value)
    return value


def register_autocast(qualname):
    """Run op ``qualname`` under ``torch.autocast`` in the region's lower-precision dtype (on
    CUDA float16 or bfloat16, on the CPU bfloat16 or float16, as ``autocast(dtype=...)``
    chose): its floating tensors are cast to it, float64 ones are left alone, and the op runs
    with autocast off. (``torch.library.register_autocast`` fixes one dtype per device.)"""
    op = getattr(torch.ops.npool, qualname.split("::")[1]).default
    for device_type in ("cpu", "cuda"):
        def autocast_kernel(*args, _device_type=device_type):
            dtype = torch.get_autocast_dtype(_device_type)
            with torch.autocast(_device_type, enabled=False):
                return op(*_cast_for_autocast(args, _device_type, dtype))
        torch.library.impl(qualname, "Autocast" + device_type.upper(), autocast_kernel)


def register_family_autocast(family):
    """Register autocast for the forward op of every kernel of ``family`` in the op table."""
    for kernel in dict.fromkeys(op.kernel for op in _op_table.ops_of(family)):
        register_autocast(f"npool::{kernel}")


# ------------------------------------------------------------------ layouts, windows, export
def layout_of(x):
    """The memory layout npool gives outputs of x (batched): its own when it is C-contiguous or
    channels-last, else C order (as the NumPy and GPU cores do)."""
    return _checks.layout_of_strides(tuple(x.shape), x.stride()) or "contiguous"


def empty_in_layout(x, shape, nd):
    """A new tensor of ``shape`` with the strides npool's cores give for input x of an
    ``nd``-d pool (batched or not)."""
    batched = x.dim() == nd + 2
    layout = layout_of(x if batched else x.unsqueeze(0))
    full = shape if batched else (1, *shape)
    strides = _checks.dense_strides(full, layout)
    return x.new_empty_strided(shape, strides if batched else strides[1:])


def window_lists(nd, kernel_size, stride, padding, dilation=1, spatial=None):
    """kernel_size, stride and dilation as lists of nd ints (stride None: the kernel) and
    padding as 2 nd ints (before and after each axis; "same" resolved for an input of spatial
    size ``spatial``), checked."""
    window = _checks.WindowArgs(nd, kernel_size, stride, padding, False, dilation=dilation)
    if spatial is None and window.spec == "same":
        raise ValueError(f"padding='same' needs x of {nd + 1} or {nd + 2} dimensions")
    pairs = window.pairs(spatial)
    return (list(window.kernel), list(window.stride), [p for pair in pairs for p in pair],
            list(window.dilation))


def onnx_export():
    """Whether torch.onnx.export is tracing: the ops then record their decomposition into
    standard PyTorch ops (_standard_ops.py), which ONNX has, instead of npool's custom ops."""
    return torch.onnx.is_in_onnx_export()


# ------------------------------------------------------------------ second derivatives
# The backward custom ops are differentiated through each op's decomposition into standard
# PyTorch ops (_standard_ops.py): d/d(grad_out, inputs) of <gg, vjp(op)(inputs, grad_out)>.
def _vjp_of_vjp(decomposition, grad_out, inputs, grad_grads):
    """For the backward op computing vjp(decomposition)(inputs, grad_out): the gradients of
    <grad_grads, that vjp> with respect to grad_out and to each input (None: no gradient)."""
    with torch.enable_grad():
        dtype = next(t for t in inputs if t is not None).dtype
        g = grad_out.detach().to(dtype).requires_grad_()
        live = [None if t is None else t.detach().requires_grad_() for t in inputs]
        differentiable = [t for t in live if t is not None]
        first = torch.autograd.grad(decomposition(*live), differentiable, g, create_graph=True,
                                    allow_unused=True)
        pairs = [(f, gg) for f, gg in zip(first, grad_grads)
                 if f is not None and gg is not None and f.requires_grad]
        if not pairs:
            return [None] * (1 + len(inputs))
        second = torch.autograd.grad([f for f, _ in pairs], [g] + differentiable,
                                     [gg.to(f.dtype) for f, gg in pairs], allow_unused=True,
                                     create_graph=torch.is_grad_enabled())
    result, rest = [None if second[0] is None else second[0].to(grad_out.dtype)], iter(second[1:])
    result += [None if t is None else next(rest) for t in inputs]
    return result


def _flat(grads):
    return list(grads[0]) if len(grads) == 1 and isinstance(grads[0], (list, tuple)) else \
        list(grads)


def _save_tensors(ctx, inputs, output):
    """Tensors through save_for_backward, the other arguments as they are."""
    ctx.tensors = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor)]
    ctx.save_for_backward(*(inputs[i] for i in ctx.tensors))
    ctx.others = [None if isinstance(t, torch.Tensor) else t for t in inputs]


def _restored(ctx):
    """The backward op's inputs, its tensors from the saved ones."""
    inputs = list(ctx.others)
    for i, t in zip(ctx.tensors, ctx.saved_tensors):
        inputs[i] = t
    return inputs


def second_order(op, decomposition_of, differentiable):
    """Registers autograd on backward op ``op``: ``decomposition_of(inputs)`` gives the
    forward's decomposition as a function of the inputs at positions ``differentiable``."""
    def backward(ctx, *grad_grads):
        inputs = _restored(ctx)
        grads = _vjp_of_vjp(decomposition_of(inputs), inputs[0],
                            [inputs[i] for i in differentiable], _flat(grad_grads))
        out = [None] * len(inputs)
        out[0] = grads[0]
        for i, gr in zip(differentiable, grads[1:]):
            out[i] = gr
        return tuple(out)
    op.register_autograd(backward, setup_context=_save_tensors)


# ------------------------------------------------------------------ vmap
# Batching rules: a vmapped axis folds into the op's batch axis (N, or B) when only the pooled
# tensor carries it; otherwise the rule loops over the mapped axis itself (what PyTorch's
# fallback does, without its warning).
def loop_over_mapped_axis(op, info, in_dims, args):
    """op over the mapped axis, one slice at a time, stacked on axis 0."""
    size = info.batch_size
    outs = []
    for i in range(size):
        sliced = [a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)]
        outs.append(op(*sliced))
    if isinstance(outs[0], (tuple, list)):
        stacked = tuple(torch.stack(parts) for parts in zip(*outs))
        return stacked, (0,) * len(stacked)
    return torch.stack(outs), 0


def folded_into_batch(op, x, x_dim, batched_rank, rest):
    """op on x with its mapped axis x_dim merged into the leading batch axis; x's other
    arguments (rest) are not mapped. ``batched_rank``: x's rank per sample when batched (an
    unbatched sample, one axis less, takes the mapped axis as its batch)."""
    x = x.movedim(x_dim, 0)
    if x.dim() == batched_rank:  # each sample unbatched: the mapped axis is the batch
        out = op(x, *rest)
        return out, (0,) * len(out) if isinstance(out, tuple) else 0
    v, n = x.shape[:2]
    out = op(x.reshape((v * n,) + tuple(x.shape[2:])), *rest)
    unfold = lambda t: t.reshape((v, n) + tuple(t.shape[1:]))  # noqa: E731
    if isinstance(out, tuple):
        return tuple(unfold(t) for t in out), (0,) * len(out)
    return unfold(out), 0
