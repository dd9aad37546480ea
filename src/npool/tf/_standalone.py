"""The decomposition of npool's ops in TensorFlow: where a graph must stand on its own.

npool.tf runs npool's kernels through ``tf.numpy_function``, a Python callback that a graph
cannot carry out of the process and XLA cannot compile. While TensorFlow builds such a graph -
a SavedModel being written (``tf.saved_model.save``, Keras' ``model.export``, the TFLite
converter of a Keras model, which writes one first), an XLA compilation (``jit_compile=True``),
or anything inside ``npool.tf.portable()`` - the ops are built from npool/_decompositions.py's
decomposition with the TensorFlow operations below instead: standard ops only, differentiable
to any order by TensorFlow itself.
"""
import contextlib
import threading
from typing import Iterator

import tensorflow as tf

_state = threading.local()


@contextlib.contextmanager
def portable() -> Iterator[None]:
    """Build npool.tf's ops from standard TensorFlow ops inside this context.

    Within the block, the ops are npool's portable decomposition (``npool/_decompositions.py``)
    instead of npool's kernels, also eagerly: for graphs that must stand alone when TensorFlow
    cannot tell (a concrete function traced for
    ``tf.lite.TFLiteConverter.from_concrete_functions``), or to compare the two forms. Slower
    than the kernels, and it holds every window's cells. SavedModel writing and XLA switch to
    the decomposition by themselves. Nestable, per thread.

    Examples
    --------
    >>> x = tf.random.normal((1, 4, 4, 2), seed=0)
    >>> with npool.tf.portable():
    ...     y = npool.tf.soft_pool2d(x, 2)
    >>> bool(np.allclose(y, npool.tf.soft_pool2d(x, 2), atol=1e-6))
    True
    """
    depth = getattr(_state, "depth", 0)
    _state.depth = depth + 1
    try:
        yield
    finally:
        _state.depth = depth


def graph_must_stand_alone():
    """True while npool's kernels cannot be in the graph being built (see the module's text)."""
    if getattr(_state, "depth", 0):
        return True
    if tf.executing_eagerly():
        return False
    try:  # TensorFlow's own tests of these contexts (Keras uses the first)
        from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext
        from tensorflow.python.saved_model.save_context import in_save_context
    except ImportError:  # pragma: no cover - a TensorFlow without them: kernels, as before
        return False
    return in_save_context() or GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def compute_in_float32(function, *tensors):
    """``function(*tensors)`` with float16/bfloat16 tensors computed in float32 (as npool's
    kernels do) and the result cast back to the first tensor's dtype."""
    dtype = tensors[0].dtype
    if dtype in (tf.float16, tf.bfloat16):
        tensors = [tf.cast(t, tf.float32) if t.dtype == dtype else t for t in tensors]
        return tf.cast(function(*tensors), dtype)
    return function(*tensors)


class TFOps:
    """npool/_decompositions.py's ``ops`` namespace in TensorFlow (graph- and XLA-friendly)."""

    @staticmethod
    def take(x, index):
        return tf.gather(x, tf.constant(index), axis=-1)

    @staticmethod
    def reshape_tail(x, count, tail):
        rank = x.shape.rank
        lead = x.shape[:rank - count]
        dims = lead.as_list() + list(tail)
        if sum(n is None or n == -1 for n in dims) <= 1:  # a static shape: what TFLite needs
            return tf.reshape(x, [-1 if n is None else n for n in dims])
        y = tf.reshape(x, tf.concat([tf.shape(x)[:rank - count],
                                     tf.constant(list(tail), tf.int32)], 0))
        y.set_shape(lead.concatenate([None if n == -1 else n for n in tail]))
        return y

    @staticmethod
    def where(condition, a, b):
        if not isinstance(b, tf.Tensor):
            b = tf.constant(b, a.dtype)
        return tf.where(tf.constant(condition) if not isinstance(condition, tf.Tensor)
                        else condition, a, b)

    @staticmethod
    def max(x, axis, keepdims):
        return tf.reduce_max(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def sum(x, axis, keepdims):
        return tf.reduce_sum(x, axis=axis, keepdims=keepdims)

    exp = staticmethod(tf.exp)
    expm1 = staticmethod(tf.math.expm1)
    log1p = staticmethod(tf.math.log1p)
    log = staticmethod(tf.math.log)
    sqrt = staticmethod(tf.sqrt)
    sigmoid = staticmethod(tf.sigmoid)
    stop_gradient = staticmethod(tf.stop_gradient)
    einsum = staticmethod(tf.einsum)

    @staticmethod
    def maximum(x, number):
        return tf.maximum(x, tf.constant(number, x.dtype))

    @staticmethod
    def matmul(x, weights):
        return tf.tensordot(x, weights, axes=[[x.shape.rank - 1], [0]])

    @staticmethod
    def concat(xs, axis):
        return tf.concat(xs, axis)

    @staticmethod
    def cast_like(a, x):
        return tf.cast(a, x.dtype)

    @staticmethod
    def top_k(x, k):
        return tf.math.top_k(x, k, sorted=False).values


def to_channels_first(x, last, batched=True):
    """x ``(N, *spatial, C)`` as ``(N, C, *spatial)`` when ``last`` (unbatched: ``(*spatial,
    C)`` as ``(C, *spatial)``); x itself otherwise."""
    if not last:
        return x
    rank, lead = x.shape.rank, 1 if batched else 0
    return tf.transpose(x, list(range(lead)) + [rank - 1] + list(range(lead, rank - 1)))


def from_channels_first(y, last, batched=True):
    """The inverse of ``to_channels_first``."""
    if not last:
        return y
    rank, lead = y.shape.rank, 1 if batched else 0
    return tf.transpose(y, list(range(lead)) + list(range(lead + 1, rank)) + [lead])


def with_second_order(decomposed, inputs, grad_out, grads):
    """The kernels' gradients ``grads`` of ``decomposed(*inputs)`` for the upstream
    gradient ``grad_out``, made differentiable: their own gradients (second order: a gradient
    penalty, a Hessian-vector product with nested tapes) are those of the decomposition's
    gradient. Returns the list of gradients (None kept)."""
    present = [i for i, g in enumerate(grads) if g is not None]
    count = len(present)
    inputs = list(inputs)

    @tf.custom_gradient
    def first_order(*ts):
        def second_order(*upstream):
            xs, dy = list(ts[count:-1]), ts[-1]
            with tf.GradientTape() as outer:
                outer.watch(xs + [dy])
                with tf.GradientTape() as inner:
                    inner.watch(xs)
                    y = decomposed(*xs)
                first = inner.gradient(y, xs, output_gradients=dy)
                first = [tf.zeros_like(x) if f is None else f for x, f in zip(xs, first)]
            wanted = [first[i] for i in present]
            second = outer.gradient(wanted, xs + [dy], output_gradients=list(upstream))
            return [None] * count + list(second)
        return [tf.identity(ts[k]) for k in range(count)], second_order

    marked = first_order(*[grads[i] for i in present], *inputs, grad_out)
    result = list(grads)
    for i, g in zip(present, marked):
        result[i] = g
    return result
