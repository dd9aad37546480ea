"""npool's ops as JAX functions: ``jax.custom_vjp`` over npool's kernels (through XLA's FFI,
``_ffi.py``; ``jax.pure_callback`` where it is unavailable) on the CPU, npool's portable decomposition (``npool/_decompositions.py``)
elsewhere. This module holds no math of its own."""
import contextlib
import math
import threading
from typing import Iterator, Optional, Protocol, Union

import jax
import jax.numpy as jnp
import numpy as np

import npool

from .. import _checks, _decompositions, _op_table
from .._op_table import core_functions
from .._types import Count, OutputSize, Padding, Size
from . import _ffi

JaxArrayLike = Union[jax.Array, np.ndarray, float]  # what jnp.asarray takes here

DATA_FORMATS = ("channels_last", "channels_first")
_state = threading.local()


# ------------------------------------------------------------------ where the ops run
@contextlib.contextmanager
def portable() -> Iterator[None]:
    """Build npool's ops from standard JAX operations (npool's portable decomposition) inside
    this context, instead of calling npool's kernels: for graphs that must stand alone
    (``jax.export``, serialisation) and for checking one form against the other. ``jax.jit``
    keeps a function's trace: trace what you export inside the context.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> with npool.jax.portable():
    ...     y = npool.jax.soft_pool2d(jnp.ones((1, 4, 4, 2)), 2)
    >>> y.shape
    (1, 2, 2, 2)
    """
    _state.portable = getattr(_state, "portable", 0) + 1
    try:
        yield
    finally:
        _state.portable -= 1


def uses_kernels() -> bool:
    """Whether npool's ops called now run npool's kernels.

    On JAX's CPU backend, every op (outside ``portable()``). On a CUDA GPU backend, the
    windowed pools (SoftPool, Max-Ent) where npool's GPU route is available - npool's CUDA
    kernels through PyCUDA, on XLA's stream - and the other ops are built from standard JAX
    operations (XLA's fused reductions and matrix products). Elsewhere (a GPU without PyCUDA, a
    TPU, or inside ``portable()``) every op is built from standard JAX operations, so nothing
    is copied to the host behind the caller's back.

    Returns
    -------
    bool

    Examples
    --------
    >>> with npool.jax.portable():
    ...     npool.jax.uses_kernels()
    False
    """
    return _kernel_platform(windowed=True) is not None


def _kernel_platform(windowed):
    """Where an op called now runs npool's kernels: "cpu", "gpu" (the GPU route, which serves
    the ``windowed`` pools only) or None (the decomposition)."""
    if getattr(_state, "portable", 0):
        return None
    backend = jax.default_backend()
    if backend == "cpu":
        return "cpu"
    if backend == "gpu" and windowed and _ffi.available("gpu"):
        return "gpu"
    return None


class JaxOps:
    """npool/_decompositions.py's ``ops`` namespace in JAX (jit-, vmap- and export-friendly)."""

    @staticmethod
    def take(x, index):
        return jnp.take(x, jnp.asarray(index), axis=-1)

    @staticmethod
    def reshape_tail(x, count, tail):
        return jnp.reshape(x, tuple(x.shape[:x.ndim - count]) + tuple(tail))

    @staticmethod
    def where(condition, a, b):
        return jnp.where(condition, a, b)

    @staticmethod
    def max(x, axis, keepdims):
        return jnp.max(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def sum(x, axis, keepdims):
        return jnp.sum(x, axis=axis, keepdims=keepdims)

    exp = staticmethod(jnp.exp)
    expm1 = staticmethod(jnp.expm1)
    log1p = staticmethod(jnp.log1p)
    log = staticmethod(jnp.log)
    sqrt = staticmethod(jnp.sqrt)
    sigmoid = staticmethod(jax.nn.sigmoid)
    stop_gradient = staticmethod(jax.lax.stop_gradient)
    matmul = staticmethod(jnp.matmul)
    einsum = staticmethod(jnp.einsum)

    @staticmethod
    def maximum(x, number):
        return jnp.maximum(x, jnp.asarray(number, x.dtype))

    @staticmethod
    def concat(xs, axis):
        return jnp.concatenate(xs, axis=axis)

    @staticmethod
    def cast_like(a, x):
        return jnp.asarray(a, dtype=x.dtype)

    @staticmethod
    def top_k(x, k):
        return jax.lax.top_k(x, k)[0]


def _in_float32(function, *arrays):
    """``function(*arrays)`` with float16/bfloat16 arrays computed in float32 (as npool's
    kernels do), the result cast back to the first array's dtype."""
    dtype = arrays[0].dtype
    if dtype in (jnp.float16, jnp.bfloat16):
        arrays = [a.astype(jnp.float32) if a is not None and a.dtype == dtype else a
                  for a in arrays]
        return function(*arrays).astype(dtype)
    return function(*arrays)


def _float_array(a, name):
    a = jnp.asarray(a)
    if not _checks.is_float_dtype(np.dtype(a.dtype)):
        raise TypeError(f"{name} must have dtype {_checks.DTYPE_NAMES}, got {a.dtype}")
    return a


# ------------------------------------------------------------------ calling the kernels
def _fold(function, ranks):
    """``function`` (arrays, each with a leading batch axis, and ``out=`` -> a tuple of
    arrays, each with that batch axis) as a kernel target for ``vmap_method="expand_dims"``:
    the axes vmap adds in front (size B, or 1 for unbatched arguments) are folded into the
    batch axis, one kernel call for the whole vmapped batch, and unfolded from the results
    (the ``out=`` arrays, XLA's contiguous buffers, folded as views). An unbatched argument
    is broadcast (a copy) on the CPU; on the GPU route, which makes no copies, the kernels then
    run once per vmapped element instead."""
    def call(*arrays, out=None):
        extra = arrays[0].ndim - ranks[0]
        if extra == 0:
            return function(*arrays, out=out)
        lead = np.broadcast_shapes(*(a.shape[:extra] for a in arrays))
        spread = [a.shape[:extra] != lead for a in arrays]
        if any(spread) and not all(isinstance(a, np.ndarray) for a in arrays):
            for index in np.ndindex(*lead):
                function(*(a[tuple(i if n > 1 else 0 for i, n in zip(index, a.shape[:extra]))]
                           for a in arrays), out=tuple(o[index] for o in out))
            return out
        folded = [(np.broadcast_to(a, lead + a.shape[extra:]) if s else a)
                  .reshape((-1,) + a.shape[extra + 1:]) for a, s in zip(arrays, spread)]
        out_folded = None if out is None else tuple(
            o.reshape((-1,) + o.shape[extra + 1:]) for o in out)
        results = function(*folded, out=out_folded)
        return tuple(r.reshape(lead + (-1,) + tuple(r.shape[1:])) for r in results)
    return call


def _host(function):
    """A ``jax.pure_callback`` target: its arguments (CPU ``jax.Array``s) as NumPy arrays over
    the same memory, its results as a tuple of contiguous arrays."""
    return lambda *arrays: tuple(np.ascontiguousarray(r) for r in
                                 function(*(np.asarray(a) for a in arrays), out=None))


def _kernel_call(target, structs, arrays, vmap_method):
    """``target`` run inside the JAX program: through XLA's FFI on XLA's own buffers
    (``npool.jax._ffi``; on the GPU route, device arrays on XLA's stream), or on the CPU through
    ``jax.pure_callback`` where the handler is unavailable."""
    platform = "cpu" if jax.default_backend() == "cpu" else "gpu"  # as _kernel_platform
    if platform == "gpu" or _ffi.available():
        return tuple(_ffi.call(target, structs, *_vary_like(arrays, arrays),
                               vmap_method=vmap_method, platform=platform))
    return tuple(jax.pure_callback(_host(target), structs, *arrays, vmap_method=vmap_method))


# ------------------------------------------------------------------ one call per shard
def _sharding_of(a):
    """``a``'s sharding as JAX knows it now: the concrete sharding of an array, the abstract
    one (``jax.typeof``) of a traced value; None when there is none to read."""
    if isinstance(a, jax.core.Tracer):
        return getattr(jax.typeof(a), "sharding", None)
    return getattr(a, "sharding", None)


def _batch_axes(a):
    """``(mesh, free axes, batch axes)`` to run the kernels once per shard of ``a``'s leading
    (batch) axis, or None when ``a`` is on one device (or already one shard of a
    ``shard_map``). The batch axes are the mesh axes that shard ``a``'s leading axis: read from
    its sharding where JAX knows it (a concrete array; explicit mesh axes under ``jit``); under
    ``jit`` with automatic mesh axes, whose layout is decided later by XLA, every automatic axis
    when their size divides the batch (the pools are independent per sample); else none (each
    device runs the whole batch, as one device would)."""
    sharding = _sharding_of(a)
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return None
    mesh = sharding.mesh
    if getattr(mesh, "empty", False) or mesh.size == 1:
        return None
    types = getattr(mesh, "axis_types", (jax.sharding.AxisType.Auto,) * len(mesh.axis_names))
    # every axis not yet manual becomes manual (a callback needs them all manual, size 1 too)
    free = tuple(n for n, t in zip(mesh.axis_names, types) if t != jax.sharding.AxisType.Manual)
    if math.prod(mesh.shape[n] for n in free) == 1:
        return None
    lead = sharding.spec[0] if len(sharding.spec) else None
    lead = () if lead is None else (lead,) if isinstance(lead, str) else tuple(lead)
    lead = tuple(n for n in lead if n in free)
    if not lead:
        auto = tuple(n for n, t in zip(mesh.axis_names, types)
                     if n in free and t == jax.sharding.AxisType.Auto)
        if auto and a.shape[0] % math.prod(mesh.shape[n] for n in auto) == 0:
            lead = auto
    return mesh, free, lead


def _explicit_batch_sharding(a):
    """The sharding of a result whose leading axis is ``a``'s batch axis, where JAX types that
    axis as sharded over explicit mesh axes (a mesh of one device too, whose arrays are typed
    ``8@batch``): the same axes on the result's leading axis, its other axes replicated (a
    gradient must have its primal's type). None elsewhere (JAX's default)."""
    if a is None:
        return None
    sharding = _sharding_of(a)
    if not isinstance(sharding, jax.sharding.NamedSharding) or getattr(sharding.mesh, "empty",
                                                                       False):
        return None
    lead = sharding.spec[0] if len(sharding.spec) else None
    if lead is None:
        return None
    names = (lead,) if isinstance(lead, str) else tuple(lead)
    axis_names = sharding.mesh.axis_names
    types = dict(zip(axis_names, getattr(sharding.mesh, "axis_types",
                                         (jax.sharding.AxisType.Auto,) * len(axis_names))))
    if not all(types.get(n) == jax.sharding.AxisType.Explicit for n in names):
        return None
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(lead))


def _varying_axes(a):
    """The manual (``shard_map``) mesh axes along which ``a``'s value varies."""
    aval = jax.typeof(a)
    manual_type = getattr(aval, "manual_axis_type", None)  # newer JAX; older ones: aval.vma
    return set(manual_type.varying if manual_type is not None else getattr(aval, "vma", ()))


def _to_varying(a, axes):
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(a, axes, to="varying")
    return jax.lax.pvary(a, axes)  # its earlier name


def _vary_like(values, arrays):
    """Inside ``shard_map``: ``values`` typed as varying over every manual axis any of
    ``arrays`` varies over - an FFI call's operands must agree (``_vary_like(arrays, arrays)``),
    and a callback's results, typed invariant, must vary as its arguments do (a gradient must
    have its primal's type)."""
    axes = set().union(*(_varying_axes(a) for a in arrays))
    if not axes:
        return tuple(values)
    cast = []
    for v in values:
        missing = tuple(sorted(axes - _varying_axes(v)))
        cast.append(_to_varying(v, missing) if missing else v)
    return tuple(cast)


def _callback(target, structs, arrays, batched_in, batched_out, vmap_method):
    """``target`` (NumPy arrays -> a tuple of arrays) run by ``_kernel_call`` once
    per shard of the batch axis where the arrays are spread over several devices, so the
    results keep the batch's sharding and nothing is gathered. ``structs``: the results'
    ``ShapeDtypeStruct``s for the whole batch; ``batched_in``/``batched_out``: which arrays and
    results have the batch as their leading axis (a result without it - the gradient of a shared
    parameter - is a sum over the batch: summed over the shards)."""
    def call(*local):
        first_local = next((a for a, b in zip(local, batched_in) if b), None)
        batch = None if first_local is None else first_local.shape[0]
        lead_sharding = _explicit_batch_sharding(first_local)
        local_structs = tuple(
            jax.ShapeDtypeStruct((batch,) + tuple(s.shape[1:]), s.dtype, sharding=lead_sharding)
            if b and batch is not None else s
            for s, b in zip(structs, batched_out))
        results = _kernel_call(target, local_structs, local, vmap_method)
        return _vary_like(results, local)

    first = next((a for a, b in zip(arrays, batched_in) if b), None)
    layout = _batch_axes(first) if first is not None else None
    if layout is None:
        return call(*arrays)
    mesh, free, lead = layout
    batch_spec = jax.sharding.PartitionSpec(lead if len(lead) > 1 else lead[0]) if lead else \
        jax.sharding.PartitionSpec()
    replicated = jax.sharding.PartitionSpec()

    def per_shard(*local):
        results = call(*local)
        if not lead:
            return results
        return tuple(r if b else jax.lax.psum(r, lead) for r, b in zip(results, batched_out))

    return jax.shard_map(per_shard, mesh=mesh, axis_names=set(free),
                         in_specs=tuple(batch_spec if b else replicated for b in batched_in),
                         out_specs=tuple(batch_spec if b else replicated for b in batched_out)
                         )(*arrays)


# ------------------------------------------------------------------ the op over the kernels
_FORWARD_MODE_TRACERS: tuple = ()
try:  # the tracer of forward-mode differentiation (jax.jvp); reverse mode (jax.grad) linearizes
    from jax._src.interpreters.ad import JVPTracer
    _FORWARD_MODE_TRACERS = (JVPTracer,)
except ImportError:  # pragma: no cover (a JAX that moved it: forward mode raises JAX's error)
    pass


def _in_forward_mode(a):
    """Whether ``a`` is being differentiated in forward mode (``jax.jvp``, ``jax.jacfwd``)."""
    return isinstance(a, _FORWARD_MODE_TRACERS)


def _kernel_op(forward, backward, differentiable, fold, decomposed, residuals=0,
               batched=None):
    """A JAX function of arrays over NumPy ``forward(*arrays) -> (y, *saved)`` and
    ``backward(g, *arrays, *saved) -> gradients of the differentiable arrays``.

    ``differentiable``: one bool per array (the others get no cotangent). ``fold``: every array
    and result has a leading batch axis, so vmap folds into it (one call); otherwise vmap runs
    the kernels once per vmapped element. ``decomposed(*arrays) -> y``: the op in standard
    JAX operations (npool's portable decomposition). ``residuals``: how many of the forward's
    results after y the backward takes (indices, norms). ``batched``: one bool per array, whether
    its leading axis is the batch (default: all).

    Reverse mode is a ``jax.custom_vjp`` over the two kernels. The kernel calls are themselves
    ``jax.custom_jvp`` functions whose tangents are the decomposition's derivatives (of y, and of
    its vector-Jacobian product), so that forward mode (``jax.jvp``, ``jax.jacfwd``) and second
    order (grad of grad, ``jax.hessian``) work too: the kernels compute the values and first
    derivatives, the decomposition the derivatives of those, as in ``npool.tf``."""
    method = "expand_dims" if fold else "sequential"
    batched = (True,) * len(differentiable) if batched is None else tuple(batched)
    wrt = [i for i, d in enumerate(differentiable) if d]

    def with_differentiable(arrays, values):
        full = list(arrays)
        for i, v in zip(wrt, values):
            full[i] = v
        return full

    @jax.custom_jvp
    def kernel_forward(*arrays):
        structs = forward.shapes(*arrays)
        target = _fold(forward, [a.ndim for a in arrays]) if fold else forward
        return _callback(target, structs, arrays, batched, (True,) * len(structs),
                         method)

    @kernel_forward.defjvp
    def kernel_forward_jvp(primals, tangents):
        results = kernel_forward(*primals)
        _, y_dot = jax.jvp(lambda *d: decomposed(*with_differentiable(primals, d)),
                           tuple(primals[i] for i in wrt), tuple(tangents[i] for i in wrt))
        saved_dots = tuple(np.zeros(r.shape, jax.dtypes.float0) for r in results[1:])
        return results, (y_dot.astype(results[0].dtype),) + saved_dots

    def portable_vjp(arrays, g, *values):
        _, pullback = jax.vjp(lambda *d: decomposed(*with_differentiable(arrays, d)),
                              *values)
        return pullback(g)

    @jax.custom_jvp
    def kernel_backward(g, *arrays_and_saved):
        arrays = arrays_and_saved[:len(differentiable)]
        structs = tuple(jax.ShapeDtypeStruct(arrays[i].shape, arrays[i].dtype) for i in wrt)
        args = (g,) + tuple(arrays_and_saved)
        target = _fold(backward, [a.ndim for a in args]) if fold else backward
        batched_args = (True,) + batched + (True,) * (len(args) - 1 - len(batched))
        return _callback(target, structs, args, batched_args,
                         tuple(batched[i] for i in wrt), method)

    @kernel_backward.defjvp
    def kernel_backward_jvp(primals, tangents):
        grads = kernel_backward(*primals)
        g, arrays = primals[0], primals[1:1 + len(differentiable)]
        dots = [tangents[0]] + [tangents[1 + i] for i in wrt]
        _, grad_dots = jax.jvp(lambda g, *d: portable_vjp(arrays, g, *d),
                               (g,) + tuple(arrays[i] for i in wrt), tuple(dots))
        return grads, tuple(d.astype(r.dtype) for d, r in zip(grad_dots, grads))

    @jax.custom_vjp
    def op(*arrays):
        return kernel_forward(*arrays)[0]

    def op_forward(*arrays):
        y, *saved = kernel_forward(*arrays)
        return y, (arrays, tuple(saved[:residuals]))

    def op_backward(res, g):
        arrays, saved = res
        grads = iter(kernel_backward(g.astype(arrays[0].dtype), *arrays, *saved))
        return tuple(next(grads) if d else None for d in differentiable)

    op.defvjp(op_forward, op_backward)

    def call(*arrays):
        if any(_in_forward_mode(a) for a in arrays):  # jax.jvp, jax.jacfwd over the op: a
            return kernel_forward(*arrays)[0]          # custom_vjp has no forward mode
        return op(*arrays)

    return call


class _Numpy:
    """A NumPy function ``function(*arrays, out=None) -> tuple of results`` (``out``: None or
    one destination array per result, which it may write into or ignore) with the shapes of
    its results: ``shapes(*jax arrays)`` gives their ``jax.ShapeDtypeStruct``s. It must close
    over static values only (``_ffi.target_key``)."""

    def __init__(self, function, shapes):
        self.function = function
        self.shapes = shapes

    def __call__(self, *arrays, out=None):
        return self.function(*arrays, out=out)

    def kernel_target_key(self, depth):
        return _ffi._describe(self.function, depth)


def _struct(shape, dtype):
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


# ------------------------------------------------------------------ local pools
def _check_format(data_format):
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got "
                         f"{data_format!r}")
    return data_format == "channels_last"


def _moveaxis(a, source, destination):
    """``numpy.moveaxis`` as a transpose: a view of a NumPy array or of the GPU route's
    ``DeviceArray`` alike."""
    source, destination = source % a.ndim, destination % a.ndim
    order = [n for n in range(a.ndim) if n != source]
    order.insert(destination, source)
    return a.transpose(order)


def _to_npool(a, last):
    """An array in JAX's order as npool's (N, C, *spatial) view (no copy)."""
    return _moveaxis(a, -1, 1) if last else a


def _from_npool(a, last):
    return _moveaxis(a, 1, -1) if last else a


def _out(out, index, last):
    """The ``index``-th destination of ``out=`` (None or a tuple of arrays in JAX's order) as
    npool's view (no copy), for the core functions' own ``out=``."""
    return None if out is None else _to_npool(out[index], last)


def _local_pool(x, lam, nd, window_options, data_format):
    """SoftPool (``lam`` None) or Max-Ent pooling of x, batched or not, over windows
    (``window_options``: kernel_size, stride, padding, ceil_mode, dilation) or adaptive ones
    (``{"output_size": ...}``)."""
    last = _check_format(data_format)
    x = _float_array(x, "x")
    if x.ndim not in (nd + 1, nd + 2):
        raise ValueError(f"x must be {nd + 1}-D or {nd + 2}-D for a {nd}-d pool, got "
                         f"{x.ndim}-D shape {x.shape}")
    if x.ndim == nd + 1:  # unbatched: the kernels and vmap work on a batch of one (an array
        # lam broadcasts against the batched output as against the unbatched one)
        return _local_pool(x[None], lam, nd, window_options, data_format)[0]
    prefix, args, geometry, out_spatial = _checks.core_window_arguments(
        nd, x.shape[1:-1] if last else x.shape[2:], window_options,
        maps=x.shape[0] * x.shape[-1 if last else 1])
    out_shape = ((x.shape[0],) + out_spatial + (x.shape[-1],) if last
                 else x.shape[:2] + out_spatial)
    scalar = lam is None or isinstance(lam, float)
    lam_value = 1.0 if lam is None else lam
    if not scalar:  # lam broadcast against y in JAX's order -> against npool's (N, C, *out)
        lam_value = _float_array(lam_value, "lam").astype(x.dtype)
        if lam_value.ndim > nd + 2:
            raise ValueError(f"lam of shape {lam_value.shape} does not broadcast to the "
                             f"output's shape {out_shape}")
        lam_value = jnp.reshape(lam_value, (1,) * (nd + 2 - lam_value.ndim) + lam_value.shape)
        if last:
            lam_value = jnp.moveaxis(lam_value, -1, 1)

    def run(x, lam_v):
        xc = jnp.moveaxis(x, -1, 1) if last else x
        y = _decompositions.local_pool(JaxOps, xc, lam_v, nd, window_options)
        return jnp.moveaxis(y, 1, -1) if last else y

    def decomposed_scalar(x):
        return _in_float32(lambda x: run(x, float(lam_value)), x)

    def decomposed_array(x, lam_v):
        return _in_float32(run, x, lam_v)

    if _kernel_platform(windowed=True) is None:
        return decomposed_scalar(x) if scalar else decomposed_array(x, lam_value)

    forward_core, backward_core = core_functions(f"{prefix}maxent_pool{nd}d")
    if scalar:
        if lam is None:  # SoftPool's own entry points (no dL/dlam to compute)
            soft_forward, soft_backward = core_functions(f"{prefix}soft_pool{nd}d")

            def pool_forward(xa, out):
                return soft_forward(_to_npool(xa, last), *args, **geometry, out=out)

            def pool_backward(g, xa, out):
                return soft_backward(_to_npool(g, last), _to_npool(xa, last), *args, **geometry, out=out)
        else:
            def pool_forward(xa, out):
                return forward_core(_to_npool(xa, last), lam_value, *args, **geometry, out=out)

            def pool_backward(g, xa, out):
                return backward_core(_to_npool(g, last), _to_npool(xa, last), lam_value,
                                     *args, **geometry, out=(out, None))[0]

        forward = _Numpy(lambda xa, out: (_from_npool(pool_forward(xa, _out(out, 0, last)),
                                                      last),),
                         lambda x: (_struct(out_shape, x.dtype),))
        backward = _Numpy(lambda g, xa, out: (
            _from_npool(pool_backward(g, xa, _out(out, 0, last)), last),), None)
        return _kernel_op(forward, backward, (True,), fold=True,
                          decomposed=decomposed_scalar)(x)

    def maxent_forward(xa, la, out):
        return (_from_npool(forward_core(_to_npool(xa, last), la, *args, **geometry,
                                         out=_out(out, 0, last)), last),)

    def maxent_backward(g, xa, la, out):
        grad_x, grad_lam = backward_core(_to_npool(g, last), _to_npool(xa, last), la, *args,
                                         **geometry,
                                         out=(_out(out, 0, last), _out(out, 1, False)))
        return _from_npool(grad_x, last), grad_lam.reshape(la.shape)

    forward = _Numpy(maxent_forward, lambda x, la: (_struct(out_shape, x.dtype),))
    backward = _Numpy(maxent_backward, None)
    lam_per_sample = lam_value.shape[0] == x.shape[0]  # (N, ...) lam: one per sample
    return _kernel_op(forward, backward, (True, True), fold=False,
                      decomposed=decomposed_array,
                      batched=(True, lam_per_sample))(x, lam_value)




def _window(kernel_size, stride, padding, ceil_mode, dilation):
    return dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                dilation=dilation)


def _lam_argument(lam):
    """A Max-Ent temperature as _local_pool takes it: a Python float for a number (not
    differentiated), else the array."""
    if isinstance(lam, (bool, np.bool_)):
        raise TypeError("lam must be a real number or an array, got bool")
    if isinstance(lam, (int, float, np.integer, np.floating)):
        return float(_checks.finite_real(lam, "lam"))
    return lam


class SoftPoolFunction(Protocol):
    """``npool.jax.soft_pool{1,2,3}d`` (what type checkers see of the functions made once per
    dimension)."""

    def __call__(self, x: JaxArrayLike, kernel_size: Size, stride: Optional[Size] = None,
                 padding: Padding = 0, ceil_mode: bool = False,
                 data_format: str = "channels_last", dilation: Size = 1) -> jax.Array: ...


class MaxEntPoolFunction(Protocol):
    """``npool.jax.maxent_pool{1,2,3}d``."""

    def __call__(self, x: JaxArrayLike, lam: Union[float, JaxArrayLike], kernel_size: Size,
                 stride: Optional[Size] = None, padding: Padding = 0, ceil_mode: bool = False,
                 data_format: str = "channels_last", dilation: Size = 1) -> jax.Array: ...


def _make_soft_pool(nd) -> SoftPoolFunction:
    shape, out = {1: ("(2, 8, 3)", "(2, 4, 3)"), 2: ("(2, 8, 8, 3)", "(2, 4, 4, 3)"),
                  3: ("(2, 4, 8, 8, 3)", "(2, 2, 4, 4, 3)")}[nd]

    def soft_pool(x: JaxArrayLike, kernel_size: Size, stride: Optional[Size] = None,
                  padding: Padding = 0, ceil_mode: bool = False,
                  data_format: str = "channels_last", dilation: Size = 1) -> jax.Array:
        return _local_pool(x, None, nd, _window(kernel_size, stride, padding, ceil_mode,
                                                dilation), data_format)

    soft_pool.__name__ = soft_pool.__qualname__ = f"soft_pool{nd}d"
    soft_pool.__doc__ = f"""SoftPool over {nd} spatial {"axis" if nd == 1 else "axes"}:
    ``y_o = sum_i softmax(x over window o)_i x_i`` over each window's real cells.

    Parameters
    ----------
    x : jax.Array
        ``(N, *spatial, C)`` (``data_format="channels_last"``, JAX's and Flax's convention,
        the default) or ``(N, C, *spatial)`` (``"channels_first"``), or either without N;
        float16, bfloat16, float32 or float64 (with ``jax_enable_x64``).
    kernel_size : int or tuple of {nd} ints
    stride : int or tuple of {nd} ints, optional
        Defaults to ``kernel_size``.
    padding : "SAME", "VALID", int, tuple of {nd} ints or of {nd} (before, after) pairs
        As ``flax.linen.max_pool`` and ``jax.lax.reduce_window`` take it: "SAME" (ceil(L /
        stride) outputs, TensorFlow's rule), "VALID" (none; either case), ``(before, after)``
        per axis (each less than the kernel), or PyTorch's ints (both sides, at most half the
        kernel). Padded cells are left out of the windows. Default 0.
    ceil_mode : bool
        PyTorch's ceil rule for the output size. Default False.
    data_format : {{"channels_last", "channels_first"}}
    dilation : int or tuple of {nd} ints
        The step between a window's cells (``jax.lax.reduce_window``'s ``window_dilation``;
        PyTorch's ``dilation``). Default 1.

    Returns
    -------
    jax.Array
        Each spatial size ``floor((L + before + after - e [+ stride - 1]) / stride) + 1``, e =
        ``(kernel - 1) dilation + 1``.
        Differentiable (``jax.grad``, ``jax.vjp``; ``jax.custom_vjp`` over npool's backward
        kernel), and usable under ``jax.jit`` and ``jax.vmap`` (vmapped axes are folded into
        the batch: one kernel call).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> npool.jax.soft_pool{nd}d(jnp.ones({shape}), kernel_size=2).shape
    {out}
    """
    return soft_pool


def _make_maxent_pool(nd) -> MaxEntPoolFunction:
    shape, out = {1: ("(2, 8, 3)", "(2, 4, 3)"), 2: ("(2, 8, 8, 3)", "(2, 4, 4, 3)"),
                  3: ("(2, 4, 8, 8, 3)", "(2, 2, 4, 4, 3)")}[nd]

    def maxent_pool(x: JaxArrayLike, lam: Union[float, JaxArrayLike], kernel_size: Size,
                    stride: Optional[Size] = None, padding: Padding = 0, ceil_mode: bool = False,
                    data_format: str = "channels_last", dilation: Size = 1) -> jax.Array:
        return _local_pool(x, _lam_argument(lam), nd, _window(
            kernel_size, stride, padding, ceil_mode, dilation), data_format)

    maxent_pool.__name__ = maxent_pool.__qualname__ = f"maxent_pool{nd}d"
    maxent_pool.__doc__ = f"""Max-Entropy pooling over {nd} spatial axes (Kobayashi, ICCV
    2019): ``y_o = sum_i softmax(lam_o x over window o)_i x_i``; ``lam = 0`` is average
    pooling, ``lam -> inf`` max pooling, ``lam = 1`` SoftPool.

    Parameters
    ----------
    x : jax.Array
        As ``soft_pool{nd}d``.
    lam : float or jax.Array
        A number (not differentiated), or an array that broadcasts to the output in x's
        axis order (``(C,)`` per channel, ``(N, 1, ..., C)`` per sample and channel for
        channels-last); differentiated.
    kernel_size, stride, padding, ceil_mode, data_format, dilation
        As ``soft_pool{nd}d``.

    Returns
    -------
    jax.Array
        The pooled array. An array ``lam`` makes ``jax.vmap`` run the kernels once per
        vmapped element.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.ones({shape})
    >>> npool.jax.maxent_pool{nd}d(x, jnp.full((3,), 0.5), kernel_size=2).shape
    {out}
    """
    return maxent_pool


soft_pool1d = _make_soft_pool(1)
soft_pool2d = _make_soft_pool(2)
soft_pool3d = _make_soft_pool(3)
maxent_pool1d = _make_maxent_pool(1)
maxent_pool2d = _make_maxent_pool(2)
maxent_pool3d = _make_maxent_pool(3)


class AdaptiveSoftPoolFunction(Protocol):
    """``npool.jax.adaptive_soft_pool{1,2,3}d``."""

    def __call__(self, x: JaxArrayLike, output_size: OutputSize,
                 data_format: str = "channels_last") -> jax.Array: ...


class AdaptiveMaxEntPoolFunction(Protocol):
    """``npool.jax.adaptive_maxent_pool{1,2,3}d``."""

    def __call__(self, x: JaxArrayLike, lam: Union[float, JaxArrayLike],
                 output_size: OutputSize, data_format: str = "channels_last") -> jax.Array: ...


def _make_adaptive_pools(nd):
    shape, size, out = {1: ("(2, 10, 3)", "4", "(2, 4, 3)"),
                        2: ("(2, 10, 9, 3)", "(4, None)", "(2, 4, 9, 3)"),
                        3: ("(2, 5, 9, 9, 3)", "3", "(2, 3, 3, 3, 3)")}[nd]

    def adaptive_soft_pool(x: JaxArrayLike, output_size: OutputSize,
                           data_format: str = "channels_last") -> jax.Array:
        return _local_pool(x, None, nd, {"output_size": output_size}, data_format)

    def adaptive_maxent_pool(x: JaxArrayLike, lam: Union[float, JaxArrayLike],
                             output_size: OutputSize,
                             data_format: str = "channels_last") -> jax.Array:
        return _local_pool(x, _lam_argument(lam), nd, {"output_size": output_size},
                           data_format)

    adaptive_soft_pool.__name__ = adaptive_soft_pool.__qualname__ = f"adaptive_soft_pool{nd}d"
    adaptive_maxent_pool.__name__ = adaptive_maxent_pool.__qualname__ = \
        f"adaptive_maxent_pool{nd}d"
    adaptive_soft_pool.__doc__ = f"""Adaptive SoftPool over {nd} spatial {"axis" if nd == 1 else "axes"}: an output of ``output_size``.

    SoftPool over PyTorch's adaptive windows (``nn.AdaptiveAvgPool{nd}d``'s): window o of n
    over L cells spans ``[floor(o L / n), ceil((o + 1) L / n))``.

    Parameters
    ----------
    x : jax.Array
        As ``soft_pool{nd}d``.
    output_size : int or tuple of {nd} ints or None
        The output's spatial size; None keeps the input's size on that axis.
    data_format : {{"channels_last", "channels_first"}}

    Returns
    -------
    jax.Array
        Differentiable, and usable under ``jax.jit`` and ``jax.vmap`` as ``soft_pool{nd}d``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> npool.jax.adaptive_soft_pool{nd}d(jnp.ones({shape}), {size}).shape
    {out}
    """
    adaptive_maxent_pool.__doc__ = f"""Adaptive Max-Entropy pooling over {nd} spatial {"axis" if nd == 1 else "axes"}: an output of ``output_size``.

    ``maxent_pool{nd}d``'s math over PyTorch's adaptive windows; ``lam = 0`` is adaptive
    average pooling, ``lam -> inf`` adaptive max pooling.

    Parameters
    ----------
    x : jax.Array
        As ``soft_pool{nd}d``.
    lam : float or jax.Array
        As ``maxent_pool{nd}d``.
    output_size : int or tuple of {nd} ints or None
        The output's spatial size; None keeps the input's size on that axis.
    data_format : {{"channels_last", "channels_first"}}

    Returns
    -------
    jax.Array
        The pooled array.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> npool.jax.adaptive_maxent_pool{nd}d(jnp.ones({shape}), 0.5, {size}).shape
    {out}
    """
    return adaptive_soft_pool, adaptive_maxent_pool


def _adaptive_typed(nd) -> "tuple[AdaptiveSoftPoolFunction, AdaptiveMaxEntPoolFunction]":
    return _make_adaptive_pools(nd)


adaptive_soft_pool1d, adaptive_maxent_pool1d = _adaptive_typed(1)
adaptive_soft_pool2d, adaptive_maxent_pool2d = _adaptive_typed(2)
adaptive_soft_pool3d, adaptive_maxent_pool3d = _adaptive_typed(3)


# ------------------------------------------------------------------ global pools
def _global_pool(name, x, keepdims, data_format, selects, options, portable):
    last = _check_format(data_format)
    keepdims = _checks.flag(keepdims, "keepdims")
    x = _float_array(x, "x")
    if x.ndim < 3:
        raise ValueError(f"x must be (N, *spatial, C) or (N, C, *spatial) with at least one "
                         f"spatial axis, got shape {x.shape}")
    nd = x.ndim - 2
    channels = x.shape[-1] if last else x.shape[1]
    if not keepdims:
        out_shape = (x.shape[0], channels)
    elif last:
        out_shape = (x.shape[0],) + (1,) * nd + (channels,)
    else:
        out_shape = x.shape[:2] + (1,) * nd
    def run(x):
        y = portable(jnp.moveaxis(x, -1, 1) if last else x, nd)
        return jnp.reshape(y, out_shape)

    def decomposed(x):
        return _in_float32(run, x)

    if _kernel_platform(windowed=False) is None:
        return decomposed(x)
    forward_core, backward_core = core_functions(name)
    n = math.prod(x.shape[1:-1] if last else x.shape[2:])
    count = 1  # the selected cells per map (their indices go from forward to backward)
    if name == "global_kmax_pool":
        count = _checks.k_count(options["k"], n, "k", rounding=options["rounding"])
    elif name == "weldon_pool":
        count = sum(_checks.weldon_counts(options["kmax"], options["kmin"], n,
                                          options["rounding"]))

    index_dtype = np.int64 if jax.config.jax_enable_x64 else np.int32  # JAX's int width

    def shape_back(a):  # npool's (N, C[, 1...]) result in JAX's order
        return np.moveaxis(a, 1, -1) if last and keepdims else a

    # LSE's backward reuses the forward's statistics: float64 (N, C, 2), carried as their bits
    # (uint32 (N, C, 4)), which JAX keeps whether or not x64 is enabled
    keeps_stats = name == "global_lse_pool"

    def pool_forward(xa, out):  # y, indices, statistics: small, copied into out
        result = forward_core(_to_npool(xa, last), keepdims=keepdims,
                              **({"return_indices": True} if selects else {}),
                              **({"return_stats": True} if keeps_stats else {}), **options)
        if keeps_stats:
            y, stats = result
            return shape_back(y), np.ascontiguousarray(stats).view(np.uint32)
        if not selects:
            return (shape_back(result),)
        y, index = result
        if name == "global_max_pool":  # the indices have y's shape
            index = shape_back(index)
        return shape_back(y), index.astype(index_dtype, copy=False)

    def pool_backward(g, xa, *index, out):
        if index and name == "global_max_pool" and last and keepdims:
            index = (np.moveaxis(index[0], -1, 1),)
        if keeps_stats:
            extra = {"stats": np.ascontiguousarray(index[0]).view(np.float64)}
        else:
            extra = {"indices": index[0].astype(np.int64, copy=False)} if index else {}
        g_npool = np.moveaxis(g, -1, 1) if last and keepdims else g
        return (_from_npool(backward_core(g_npool, _to_npool(xa, last), keepdims=keepdims,
                                          **options, **extra, out=_out(out, 0, last)), last),)

    def shapes(x):
        structs = (_struct(out_shape, x.dtype),)
        if selects:
            index_shape = out_shape if name == "global_max_pool" else \
                (x.shape[0], channels, count)
            structs += (_struct(index_shape, index_dtype),)
        if keeps_stats:
            structs += (_struct((x.shape[0], channels, 4), np.uint32),)
        return structs

    op = _kernel_op(_Numpy(pool_forward, shapes), _Numpy(pool_backward, None), (True,),
                    fold=True, decomposed=decomposed,
                    residuals=1 if selects or keeps_stats else 0)
    return op(x)


def global_max_pool(x: JaxArrayLike, keepdims: bool = False,
                    data_format: str = "channels_last") -> jax.Array:
    """Global max pooling: ``y = max x`` over the spatial axes of each (sample, channel) map.

    Parameters
    ----------
    x : jax.Array
        ``(N, *spatial, C)`` (channels-last, the default) or ``(N, C, *spatial)``.
    keepdims : bool
        Keep the spatial axes with size 1.
    data_format : {"channels_last", "channels_first"}

    Returns
    -------
    jax.Array
        ``(N, C)`` (or with the spatial axes kept). The gradient goes to the first maximum
        (lowest flat index), which the forward's kernel records.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> npool.jax.global_max_pool(jnp.arange(8.0).reshape(1, 2, 2, 2)).tolist()
    [[6.0, 7.0]]
    """
    return _global_pool("global_max_pool", x, keepdims, data_format, True, {},
                        lambda x, nd: _decompositions.global_max_pool(JaxOps, x, nd))


def global_avg_pool(x: JaxArrayLike, keepdims: bool = False,
                    data_format: str = "channels_last") -> jax.Array:
    """Global average pooling of each (sample, channel) map.

    ``y = mean x`` over the spatial axes (npool.global_avg_pool_forward).

    Parameters
    ----------
    x : jax.Array
        ``(N, *spatial, C)`` (``data_format="channels_last"``, the default) or
        ``(N, C, *spatial)``; float16, bfloat16, float32 or float64 (x64).
    keepdims : bool, default False
        Keep the spatial axes with size 1.
    data_format : {"channels_last", "channels_first"}, default "channels_last"

    Returns
    -------
    jax.Array
        ``(N, C)`` (or with the spatial axes kept as 1), x's dtype.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(16.0).reshape(1, 2, 4, 2)     # (N, H, W, C)
    >>> npool.jax.global_avg_pool(x).tolist()
    [[7.0, 8.0]]
    """
    return _global_pool("global_avg_pool", x, keepdims, data_format, False, {},
                        lambda x, nd: _decompositions.global_avg_pool(JaxOps, x, nd))


def global_lse_pool(x: JaxArrayLike, beta: float = 1.0, keepdims: bool = False,
                    data_format: str = "channels_last") -> jax.Array:
    """LogSumExp pooling of each map.

    ``y = (1/beta) log((1/n) sum_i exp(beta x_i))``, the mean at ``beta = 0`` (npool.global_lse_pool_forward).

    Parameters
    ----------
    x : jax.Array
        ``(N, *spatial, C)`` (``data_format="channels_last"``, the default) or
        ``(N, C, *spatial)``; float16, bfloat16, float32 or float64 (x64).
    beta : float, default 1.0
        The sharpness, finite.
    keepdims : bool, default False
        Keep the spatial axes with size 1.
    data_format : {"channels_last", "channels_first"}, default "channels_last"

    Returns
    -------
    jax.Array
        ``(N, C)`` (or with the spatial axes kept as 1), x's dtype.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(16.0).reshape(1, 2, 4, 2)     # (N, H, W, C)
    >>> npool.jax.global_lse_pool(x, beta=0.0).tolist()
    [[7.0, 8.0]]
    """
    beta = _checks.finite_real(beta, "beta")
    return _global_pool("global_lse_pool", x, keepdims, data_format, False, {"beta": beta},
                        lambda x, nd: _decompositions.global_lse_pool(JaxOps, x, nd, beta))


def global_gem_pool(x: JaxArrayLike, p: Union[float, JaxArrayLike] = 3.0, eps: float = 1e-6,
                    keepdims: bool = False, data_format: str = "channels_last") -> jax.Array:
    """Generalised-mean (GeM) pooling of each map, differentiable in x and p.

    ``y = ((1/n) sum_i max(x_i, eps)^p)^(1/p)`` (npool.global_gem_pool_forward): the mean at
    ``p = 1``, the max as ``p -> inf``.

    Parameters
    ----------
    x : jax.Array
        ``(N, *spatial, C)`` (``data_format="channels_last"``, the default) or
        ``(N, C, *spatial)``; float16, bfloat16, float32 or float64 (x64).
    p : float or jax.Array, default 3.0
        The exponent, positive and finite: a number, or an array that broadcasts to
        ``(N, C)`` (``(C,)`` per channel); its gradient has its shape.
    eps : float, default 1e-6
        The clamp floor.
    keepdims : bool, default False
        Keep the spatial axes with size 1.
    data_format : {"channels_last", "channels_first"}, default "channels_last"

    Returns
    -------
    jax.Array
        ``(N, C)`` (or with the spatial axes kept as 1), x's dtype.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(1.0, 17.0).reshape(1, 2, 4, 2)     # (N, H, W, C)
    >>> npool.jax.global_gem_pool(x, p=1.0).tolist()
    [[8.0, 9.0]]
    """
    return _gem_pool(x, p, eps, keepdims, data_format)


def _gem_pool(x, p, eps, keepdims, data_format):
    last = _check_format(data_format)
    keepdims = _checks.flag(keepdims, "keepdims")
    eps = _checks.finite_real(eps, "eps")
    x = _float_array(x, "x")
    if x.ndim < 3:
        raise ValueError(f"x must be (N, *spatial, C) or (N, C, *spatial) with at least one "
                         f"spatial axis, got shape {x.shape}")
    nd = x.ndim - 2
    channels = x.shape[-1] if last else x.shape[1]
    if not keepdims:
        out_shape = (x.shape[0], channels)
    elif last:
        out_shape = (x.shape[0],) + (1,) * nd + (channels,)
    else:
        out_shape = x.shape[:2] + (1,) * nd
    if not isinstance(p, jax.Array):
        p = _checks.finite_real(p, "p") if isinstance(p, (int, float)) else p
    p = _float_array(p, "p")
    if p.ndim > 2:
        raise ValueError(f"p of shape {p.shape} does not broadcast to the maps' shape "
                         f"{(x.shape[0], channels)} (N, C)")
    if p.dtype in (jnp.float16, jnp.bfloat16):
        p = p.astype(jnp.float32)

    def run(x, p):
        y = _decompositions.global_gem_pool(JaxOps, jnp.moveaxis(x, -1, 1) if last else x, nd,
                                           p, eps)
        return jnp.reshape(y, out_shape)

    def decomposed(x, p):
        return _in_float32(run, x, p)

    if _kernel_platform(windowed=False) is None:
        return decomposed(x, p)

    def gem_forward(xa, pa, out):  # y: small, copied into out
        y = npool.global_gem_pool_forward(_to_npool(xa, last), pa, eps, keepdims)
        return (np.moveaxis(y, 1, -1) if last and keepdims else y,)

    def gem_backward(g, xa, pa, out):
        g_npool = np.moveaxis(g, -1, 1) if last and keepdims else g
        grad_x, grad_p = npool.global_gem_pool_backward(g_npool, _to_npool(xa, last), pa, eps,
                                                        keepdims, out=(_out(out, 0, last), None))
        return _from_npool(grad_x, last), np.asarray(grad_p, pa.dtype).reshape(pa.shape)

    forward = _Numpy(gem_forward, lambda x, p: (_struct(out_shape, x.dtype),))
    p_per_sample = p.ndim == 2 and p.shape[0] == x.shape[0]  # (N, C): one row per sample
    return _kernel_op(forward, _Numpy(gem_backward, None), (True, True), fold=False,
                      decomposed=decomposed, batched=(True, p_per_sample))(x, p)


def global_kmax_pool(x: JaxArrayLike, k: Count = 1, keepdims: bool = False,
                     data_format: str = "channels_last", rounding: str = "floor") -> jax.Array:
    """k-max pooling: the mean of the k largest cells of each map.

    Ties go to the lower flat index; the gradient reaches the cells the forward selected.

    Parameters
    ----------
    x : jax.Array
        ``(N, *spatial, C)`` (``data_format="channels_last"``, the default) or
        ``(N, C, *spatial)``; float16, bfloat16, float32 or float64 (x64).
    k : int or float, default 1
        A count, or a fraction in (0, 1] of the cells.
    rounding : {"floor", "round"}, default "floor"
        The rule for fractional counts ("round": WILDCAT's).
    keepdims : bool, default False
        Keep the spatial axes with size 1.
    data_format : {"channels_last", "channels_first"}, default "channels_last"

    Returns
    -------
    jax.Array
        ``(N, C)`` (or with the spatial axes kept as 1), x's dtype.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(16.0).reshape(1, 2, 4, 2)     # (N, H, W, C)
    >>> npool.jax.global_kmax_pool(x, k=2).tolist()
    [[13.0, 14.0]]
    """
    _checks.k_count(k, 1, "k", rounding=rounding)
    return _global_pool("global_kmax_pool", x, keepdims, data_format, True,
                        {"k": k, "rounding": rounding},
                        lambda x, nd: _decompositions.weldon_pool(JaxOps, x, nd, k, 0,
                                                                 rounding=rounding))


def weldon_pool(x: JaxArrayLike, kmax: Count = 1, kmin: Optional[Count] = None, alpha: float = 1.0,
                keepdims: bool = False, data_format: str = "channels_last",
                rounding: str = "floor") -> jax.Array:
    """WELDON pooling: ``mean(kmax largest) + alpha * mean(kmin smallest)`` of each map.

    ``kmin=None`` means kmin = kmax; counts or fractions as ``global_kmax_pool``.

    Parameters
    ----------
    x : jax.Array
        ``(N, *spatial, C)`` (``data_format="channels_last"``, the default) or
        ``(N, C, *spatial)``; float16, bfloat16, float32 or float64 (x64).
    kmax : int or float, default 1
    kmin : int or float, optional
    alpha : float, default 1.0
    rounding : {"floor", "round"}, default "floor"
    keepdims : bool, default False
        Keep the spatial axes with size 1.
    data_format : {"channels_last", "channels_first"}, default "channels_last"

    Returns
    -------
    jax.Array
        ``(N, C)`` (or with the spatial axes kept as 1), x's dtype.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(16.0).reshape(1, 2, 4, 2)     # (N, H, W, C)
    >>> npool.jax.weldon_pool(x, kmax=1, kmin=1, alpha=1.0).tolist()
    [[14.0, 16.0]]
    """
    _checks.weldon_counts(kmax, kmin, 1, rounding)
    alpha = _checks.finite_real(alpha, "alpha")
    return _global_pool("weldon_pool", x, keepdims, data_format, True,
                        {"kmax": kmax, "kmin": kmin, "alpha": alpha, "rounding": rounding},
                        lambda x, nd: _decompositions.weldon_pool(JaxOps, x, nd, kmax, kmin,
                                                                 alpha, rounding))


# ------------------------------------------------------------------ set pools
def _set_op(name, arrays, mask, out_shape, portable, fold=False):
    """A LOUPE op over npool's set kernels: ``arrays`` differentiated, ``mask`` (B, M) bools
    or None (not differentiated), ``mask=False`` for ops without one."""
    names = _op_table.OPS[name].differentiable  # the arrays' names, in signature order
    arrays = [_float_array(a, n) for a, n in zip(arrays, names)]
    dtype = arrays[0].dtype
    arrays = [arrays[0]] + [a.astype(dtype) for a in arrays[1:]]
    has_mask = mask is not None and mask is not False
    masks = [jnp.asarray(mask, jnp.bool_)] if has_mask else []
    n = len(arrays)

    def decomposed(*values):
        mask_args = [] if mask is False else [values[n] if has_mask else None]
        return _in_float32(lambda *us: portable(JaxOps, *us, *mask_args), *values[:n])

    if _kernel_platform(windowed=False) is None:
        return decomposed(*arrays, *masks)
    forward_core, backward_core = core_functions(name)
    # the arrays with a leading batch axis (the others - centres, weights - are shared by the
    # batch; x of Context Gating is (..., n), batched when it has more than one axis)
    batched = [name != "context_gating" or arrays[0].ndim > 1] + [
        array_name == "assign" for array_name in names[1:]]

    takes_mask = mask is not False  # (the targets close over static values only)

    def keywords(values):
        if not takes_mask:
            return {}
        return {"mask": values[n] if has_mask else None}

    def set_forward(*values, out):
        return (forward_core(*values[:n], **keywords(values), out=out),)

    def set_backward(g, *values, out):
        grads = backward_core(g, *values[:n], **keywords(values), out=out)
        return grads if isinstance(grads, tuple) else (grads,)

    op = _kernel_op(_Numpy(set_forward, lambda *a: (_struct(out_shape(a[0]), dtype),)),
                    _Numpy(set_backward, None), (True,) * n + (False,) * len(masks), fold,
                    decomposed=decomposed, batched=batched + [True] * len(masks))
    return op(*arrays, *masks)


def netvlad_pool(x: JaxArrayLike, assign: JaxArrayLike, centers: JaxArrayLike,
                 mask: Optional[JaxArrayLike] = None) -> jax.Array:
    """NetVLAD pooling (LOUPE): ``V_dk = sum_m a_mk (x_md - c_dk)``, each column l2-normalised
    over d, flattened D-major and l2-normalised: ``(B, D * K)``.

    Parameters
    ----------
    x : jax.Array, ``(B, M, D)``
    assign : jax.Array, ``(B, M, K)``
        Soft assignments (a softmax over K).
    centers : jax.Array, ``(D, K)``
    mask : jax.Array of bool, ``(B, M)``, optional
        The real samples of each set (not differentiated).

    Returns
    -------
    jax.Array
        ``(B, D * K)``; differentiable in x, assign and centers.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x, a = jnp.ones((2, 5, 4)), jnp.full((2, 5, 3), 1 / 3)
    >>> npool.jax.netvlad_pool(x, a, jnp.zeros((4, 3))).shape
    (2, 12)
    """
    return _set_op("netvlad_pool", [x, assign, centers], mask,
                   lambda x: (x.shape[0], x.shape[2] * jnp.shape(assign)[2]),
                   _decompositions.vlad_pool)


def netrvlad_pool(x: JaxArrayLike, assign: JaxArrayLike,
                  mask: Optional[JaxArrayLike] = None) -> jax.Array:
    """NetRVLAD pooling (NetVLAD without centres).

    ``V_dk = sum_m a_mk x_md``, normalised as NetVLAD.

    Parameters
    ----------
    x : jax.Array
        ``(B, M, D)``.
    assign : jax.Array
        ``(B, M, K)``, a softmax over K.
    mask : jax.Array of bool, optional
        ``(B, M)``: the real samples (not differentiated).

    Returns
    -------
    jax.Array
        ``(B, D * K)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x, a = jnp.ones((2, 5, 4)), jnp.full((2, 5, 3), 1 / 3)
    >>> npool.jax.netrvlad_pool(x, a).shape
    (2, 12)
    """
    return _set_op("netrvlad_pool", [x, assign], mask,
                   lambda x: (x.shape[0], x.shape[2] * jnp.shape(assign)[2]),
                   lambda ops, x, a, m: _decompositions.vlad_pool(ops, x, a, None, m))


def netfv_pool(x: JaxArrayLike, assign: JaxArrayLike, mu: JaxArrayLike,
               covar_weights: JaxArrayLike, mask: Optional[JaxArrayLike] = None) -> jax.Array:
    """NetFV pooling (LOUPE's Fisher vector).

    First- and second-order parts, each l2-normalised, concatenated (npool.netfv_pool_forward).

    Parameters
    ----------
    x : jax.Array
        ``(B, M, D)``.
    assign : jax.Array
        ``(B, M, K)``, a softmax over K.
    mu : jax.Array
        ``(D, K)`` means.
    covar_weights : jax.Array
        ``(D, K)``: ``sigma = covar_weights^2 + 1e-6``.
    mask : jax.Array of bool, optional
        ``(B, M)``: the real samples (not differentiated).

    Returns
    -------
    jax.Array
        ``(B, 2 * D * K)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x, a = jnp.ones((2, 5, 4)), jnp.full((2, 5, 3), 1 / 3)
    >>> npool.jax.netfv_pool(x, a, jnp.zeros((4, 3)), jnp.ones((4, 3))).shape
    (2, 24)
    """
    return _set_op("netfv_pool", [x, assign, mu, covar_weights], mask,
                   lambda x: (x.shape[0], 2 * x.shape[2] * jnp.shape(assign)[2]),
                   _decompositions.fv_pool)


def soft_dbow_pool(assign: JaxArrayLike, mask: Optional[JaxArrayLike] = None) -> jax.Array:
    """Soft-DBoW: the l2-normalised sum of each set's assignments.

    ``y_b = l2n(sum_m a_bm)``; vmap folds into the batch.

    Parameters
    ----------
    assign : jax.Array
        ``(B, M, K)``.
    mask : jax.Array of bool, optional
        ``(B, M)``: the real samples (not differentiated).

    Returns
    -------
    jax.Array
        ``(B, K)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x, a = jnp.ones((2, 5, 4)), jnp.full((2, 5, 3), 1 / 3)
    >>> npool.jax.soft_dbow_pool(a).shape
    (2, 3)
    """
    return _set_op("soft_dbow_pool", [assign], mask,
                   lambda a: (a.shape[0], a.shape[2]), _decompositions.dbow_pool, fold=True)


def context_gating(x: JaxArrayLike, weights: JaxArrayLike, biases: JaxArrayLike) -> jax.Array:
    """Context Gating: ``y = x * sigmoid(x W + b)`` over x's last axis.

    Differentiable in x, weights and biases.

    Parameters
    ----------
    x : jax.Array
        ``(..., n)``.
    weights : jax.Array
        ``(n, n)``.
    biases : jax.Array
        ``(n,)``.

    Returns
    -------
    jax.Array
        x's shape.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x, a = jnp.ones((2, 5, 4)), jnp.full((2, 5, 3), 1 / 3)
    >>> npool.jax.context_gating(x, jnp.zeros((4, 4)), jnp.zeros(4)).shape
    (2, 5, 4)
    """
    x = _float_array(x, "x")
    return _set_op("context_gating", [x, weights, biases], False, lambda a: a.shape,
                   _decompositions.context_gating)
