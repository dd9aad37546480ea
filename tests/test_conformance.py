"""The conformance suite: every op of the op table (npool/_op_table.py) through every adapter,
each capability the table gives it, with nothing listed by hand here.

For each op, problems drawn by ``npool.testing.problems`` run through each adapter's public
function, forward and backward, and must equal the core's results, one gradient per
differentiable input of the table:

- npool.torch (autograd): every custom op the call reaches is recorded and goes through
  ``torch.library.opcheck`` (its schema, fake tensor, autograd registration and AOT
  dispatch), the backward ones included, and they are the ops the table names
  (``npool::<kernel>`` and ``npool::<kernel>_backward``); inside ``torch.autocast`` every op
  runs in the region's dtype;
- npool.torch under ``torch.compile(fullgraph=True)`` (forward and backward), ``torch.vmap``
  (a mapped axis on x: equal to mapping by hand, without PyTorch's fallback) and to second
  order (``gradgradcheck``; the selections on distinct values, where they are smooth);
- npool.jax (``jax.vjp``, and the forward under ``jax.jit``; float64), its forward mode
  (``jax.jvp``: the tangent along a direction equals the reverse-mode gradients' product with
  it) and ``jax.vmap``; npool.tf (``tf.GradientTape``, and the forward inside
  ``tf.function``) and its decomposition (``npool.tf.portable()``, compiled by XLA), with
  channels-first data.

Still listed by hand in the adapter tests: export (torch.export, ONNX, SavedModel, TFLite) and
Keras on each backend.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npool
from npool._op_table import OPS
from npool.testing._check import SELECTIONS, _smooth
from npool.testing.strategies import PADDINGS, problems

torch = pytest.importorskip("torch")
nt = pytest.importorskip("npool.torch")
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_map  # noqa: E402

# Every adapter takes every padding form of the local pools (PADDINGS) and dilation, which
# the problems draw by default; npool.torch's ints are PyTorch's, its "same"/"valid"
# nn.Conv2d's.


class _NpoolCalls(TorchDispatchMode):
    """Records the calls of npool's custom ops (forward, and backward under autograd)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "npool":  # the arguments cut from the caller's graph
            self.calls.append((func, *tree_map(_detached, (args, kwargs))))
        return func(*args, **kwargs)


def _detached(value):
    if not isinstance(value, torch.Tensor):
        return value
    return value.detach().clone().requires_grad_(value.requires_grad)


def _tensor(a, grad=False):
    t = torch.from_numpy(np.array(a, copy=True))  # the adapters see the problem's layout
    if isinstance(a, np.ndarray) and a.ndim >= 3 and not a.flags.c_contiguous and \
            np.moveaxis(a, 1, -1).flags.c_contiguous:
        t = torch.from_numpy(np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1))
    return t.requires_grad_(grad) if t.is_floating_point() else t


def _torch_call(problem):
    """The problem's inputs as tensors (the differentiable ones requiring gradients), its
    options with arrays as tensors."""
    inputs = {name: _tensor(a, grad=True) for name, a in problem.inputs.items()}
    options = {key: _tensor(value) if isinstance(value, np.ndarray) else value
               for key, value in problem.options.items()}
    return inputs, options


@pytest.mark.parametrize("name", list(OPS))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_torch_conforms(name, data):
    op = OPS[name]
    problem = data.draw(problems(name, dtypes=("float64",),
                                 layouts=("contiguous", "channels_last"), extreme=False))
    inputs, options = _torch_call(problem)
    function = getattr(nt, name)
    with _NpoolCalls() as recorder:
        y = function(*inputs.values(), **options)
        if y.numel():
            y.backward(torch.from_numpy(np.asarray(problem.grad_out, np.float64)))
    expected, grads = _core_results(problem, name)
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    if y.numel():
        assert len(grads) == len(op.differentiable)
        for input_name, expected_grad in zip(op.differentiable, grads):
            got = inputs[input_name].grad
            got = torch.zeros_like(inputs[input_name]) if got is None else got
            np.testing.assert_allclose(got.numpy(), expected_grad, rtol=1e-10, atol=1e-12)
    reached = {func._opname for func, _, _ in recorder.calls}
    assert reached <= {op.kernel, f"{op.kernel}_backward"}, reached
    assert op.kernel in reached
    if y.numel() and any(inputs[n].numel() for n in op.differentiable):
        assert f"{op.kernel}_backward" in reached
    for func, args, kwargs in recorder.calls:
        torch.library.opcheck(func, args, kwargs)


@pytest.mark.parametrize("name", list(OPS))
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_torch_autocast_conforms(name, data):
    """Inside ``torch.autocast`` every op runs in the region's dtype, as on inputs cast to it
    (float64 inputs and non-float ones left alone)."""
    problem = data.draw(problems(name, dtypes=("float32",), layouts=("contiguous",),
                                 extreme=False))
    inputs, options = _torch_call(problem)
    function = getattr(nt, name)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.no_grad():
            with torch.autocast("cpu", dtype=dtype):
                y = function(*inputs.values(), **options)
            cast = {key: t.to(dtype) for key, t in inputs.items()}
            cast_options = {key: value.to(dtype) if isinstance(value, torch.Tensor) and
                            value.is_floating_point() else value
                            for key, value in options.items()}
            expected = function(*cast.values(), **cast_options)
        assert y.dtype == dtype
        torch.testing.assert_close(y, expected, rtol=0, atol=0, equal_nan=True)


def _function_of(name, options):
    function = getattr(nt, name)
    return lambda *tensors: function(*tensors, **options)


def _batched_torch_problem(data, name):
    """A float64 problem with a batch of at least one (vmap and compile want one)."""
    op = OPS[name]
    problem = data.draw(problems(name, dtypes=("float64",), layouts=("contiguous",),
                                 extreme=False).filter(
        lambda p: (op.family == "set" or np.ndim(p.inputs["x"]) == op_rank(p, op)) and
        all(np.size(a) for a in p.inputs.values())))
    return problem


@pytest.mark.parametrize("name", list(OPS))
@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_torch_compile_conforms(name, data):
    """torch.compile(fullgraph=True) (Dynamo and AOTAutograd over the custom ops and their
    fakes) gives the eager forward and gradients."""
    problem = _batched_torch_problem(data, name)
    inputs, options = _torch_call(problem)
    function = _function_of(name, options)
    torch._dynamo.reset()  # each example's function is a new closure of the same code
    compiled = torch.compile(function, fullgraph=True, backend="aot_eager")
    eager_inputs = [t.detach().clone().requires_grad_() for t in inputs.values()]
    y = compiled(*inputs.values())
    expected = function(*eager_inputs)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    g = torch.from_numpy(np.asarray(problem.grad_out, np.float64))
    grads = torch.autograd.grad(y, list(inputs.values()), g, allow_unused=True)
    expected_grads = torch.autograd.grad(expected, eager_inputs, g, allow_unused=True)
    for got, want in zip(grads, expected_grads):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(OPS))
@settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_torch_vmap_conforms(name, data, capfd):
    """torch.vmap over a new leading axis of the op's first input equals mapping by hand, with
    a batching rule (no fallback warning)."""
    problem = _batched_torch_problem(data, name)
    inputs, options = _torch_call(problem)
    first, *rest = [t.detach() for t in inputs.values()]
    stacked = torch.stack([first, 0.5 * first + 1])
    function = _function_of(name, options)
    mapped = torch.vmap(lambda t: function(t, *rest))(stacked)
    by_hand = torch.stack([function(t, *rest) for t in stacked])
    torch.testing.assert_close(mapped, by_hand, rtol=1e-12, atol=1e-12)
    assert "batching rule" not in capfd.readouterr().err


@pytest.mark.parametrize("name", list(OPS))
@settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_torch_second_order_conforms(name, data):
    """gradgradcheck through the op (its backward op differentiated through the op's
    decomposition). Selections are drawn on distinct values (their gradient is constant
    between ties), the others where the op is smooth."""
    problem = _batched_torch_problem(data, name)
    if name in SELECTIONS:
        x = problem.inputs["x"]
        distinct = np.random.default_rng(0).permutation(x.size).reshape(x.shape) * 0.25
        problem.inputs["x"] = distinct.astype(x.dtype)
    elif not _smooth(problem):
        return
    inputs, options = _torch_call(problem)
    assert torch.autograd.gradgradcheck(_function_of(name, options), tuple(inputs.values()))


# ------------------------------------------------------------------ npool.jax, npool.tf
def _adapter_call(problem, op):
    """The problem's arrays (inputs as float64 arrays, lam included) and options for a
    framework function that takes channels-first data (local and global pools)."""
    inputs = {name: np.asarray(a, np.float64) for name, a in problem.inputs.items()}
    options = dict(problem.options)
    if op.family != "set":
        options["data_format"] = "channels_first"
    return inputs, options


def _core_results(problem, name):
    y = getattr(npool, f"{name}_forward")(*problem.args, **problem.options)
    y = y[0] if isinstance(y, tuple) else y
    grads = getattr(npool, f"{name}_backward")(problem.grad_out, *problem.args,
                                               **problem.options)
    return y, grads if isinstance(grads, tuple) else (grads,)


def _assert_matches_the_core(problem, name, forwards, grads):
    """Each of ``forwards`` (an adapter's outputs, one per way of running it) equals the core's
    forward, and ``grads`` its backward: one per differentiable input of the table."""
    expected_y, expected_grads = _core_results(problem, name)
    for y in forwards:
        np.testing.assert_allclose(np.asarray(y), expected_y, rtol=1e-10, atol=1e-12)
    assert len(grads) == len(OPS[name].differentiable)
    for got, expected in zip(grads, expected_grads):
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-9, atol=1e-12)


def _differentiable_at(problem):
    """Whether the op is differentiable at the problem: a selection where no map has a tie,
    the others where npool.testing calls them smooth."""
    if problem.op not in SELECTIONS:
        return _smooth(problem)
    x = np.asarray(problem.inputs["x"])
    n = int(np.prod(x.shape[2:]))
    return all(len(np.unique(row)) == n for row in x.reshape(-1, n))


def _adapter_problems(name, paddings=PADDINGS, dilations=True):
    """Batched float64 problems in C order (the frameworks' arrays have no other layout)."""
    op = OPS[name]
    return problems(name, dtypes=("float64",), layouts=("contiguous",), extreme=False,
                    paddings=paddings, dilations=dilations).filter(
        lambda p: op.family == "set" or np.ndim(p.inputs["x"]) == op_rank(p, op))


def op_rank(problem, op):
    """The rank of a batched x: (N, C, *spatial)."""
    return (op.nd or np.ndim(problem.inputs["x"]) - 2) + 2


@pytest.mark.parametrize("name", list(OPS))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.filter_too_much])
@given(data=st.data())
def test_jax_conforms(name, data):
    """npool.jax's function, under jax.vjp (and jax.jit), equals the core: the forward, and
    one gradient per differentiable input of the table."""
    jax = pytest.importorskip("jax")
    nj = pytest.importorskip("npool.jax")
    op = OPS[name]
    problem = data.draw(_adapter_problems(name))
    inputs, options = _adapter_call(problem, op)
    enable = jax.enable_x64(True) if hasattr(jax, "enable_x64") else \
        __import__("jax.experimental", fromlist=["enable_x64"]).enable_x64()
    with enable:
        def function(*values):
            arrays = dict(zip(op.differentiable, values))
            return getattr(nj, name)(**arrays, **options)

        values = [inputs[n] for n in op.differentiable]
        y, pullback = jax.vjp(function, *values)
        grads = pullback(np.asarray(problem.grad_out, np.float64))
        jitted = jax.jit(function)(*values)
        # forward mode: <g, J v> = <J^T g, v> where the op is differentiable (a selection
        # at a tie is not: the kernels give the first cell what the decomposition splits)
        if _differentiable_at(problem):
            rng = np.random.default_rng(1)
            directions = [rng.standard_normal(np.shape(v)) for v in values]
            _, tangent = jax.jvp(function, values, directions)
            along = sum(float(np.sum(np.asarray(gr) * d)) for gr, d in zip(grads, directions))
            np.testing.assert_allclose(float(np.sum(np.asarray(tangent) * problem.grad_out)),
                                       along, rtol=1e-8, atol=1e-10)
        if np.ndim(values[0]) and np.size(values[0]):  # vmap over a new axis of the first
            stacked = np.stack([values[0], 0.5 * values[0] + 1])
            mapped = jax.vmap(lambda v: function(v, *values[1:]))(stacked)
            for i in range(2):
                np.testing.assert_allclose(np.asarray(mapped[i]),
                                           np.asarray(function(stacked[i], *values[1:])),
                                           rtol=1e-12, atol=1e-12)
    _assert_matches_the_core(problem, name, (y, jitted), grads)


@pytest.mark.parametrize("name", list(OPS))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.filter_too_much])
@given(data=st.data())
def test_tf_conforms(name, data):
    """npool.tf's function, under tf.GradientTape (and inside tf.function), equals the core:
    the forward, and one gradient per differentiable input of the table."""
    tf = pytest.importorskip("tensorflow")
    ntf = pytest.importorskip("npool.tf")
    op = OPS[name]
    problem = data.draw(_adapter_problems(name))
    inputs, options = _adapter_call(problem, op)
    variables = {n: tf.Variable(inputs[n]) for n in op.differentiable}
    options = {key: tf.constant(value) if isinstance(value, np.ndarray) else value
               for key, value in options.items()}
    with tf.GradientTape() as tape:
        y = getattr(ntf, name)(**variables, **options)
    grads = tape.gradient(y, [variables[n] for n in op.differentiable],
                          output_gradients=tf.constant(np.asarray(problem.grad_out, np.float64)),
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    graph = tf.function(lambda: getattr(ntf, name)(**variables, **options))()
    _assert_matches_the_core(problem, name, (y, graph), grads)


@pytest.mark.parametrize("name", list(OPS))
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.filter_too_much])
@given(data=st.data())
def test_tf_portable_form_conforms(name, data):
    """Inside npool.tf.portable() (what SavedModel, XLA and TFLite build) the op is npool's
    decomposition into standard TensorFlow ops: it equals the core, forward and gradients,
    eagerly and compiled by XLA (``jit_compile=True``). Selections on distinct values (tf's
    top_k breaks ties by its own rule; the values are the same, the gradient's cells not)."""
    tf = pytest.importorskip("tensorflow")
    ntf = pytest.importorskip("npool.tf")
    op = OPS[name]
    problem = data.draw(_adapter_problems(name))
    if name in SELECTIONS and np.size(problem.inputs["x"]):
        x = problem.inputs["x"]
        problem.inputs["x"] = np.random.default_rng(0).permutation(x.size).reshape(
            x.shape).astype(x.dtype) * 0.25
    inputs, options = _adapter_call(problem, op)
    options = {key: tf.constant(value) if isinstance(value, np.ndarray) else value
               for key, value in options.items()}
    g = tf.constant(np.asarray(problem.grad_out, np.float64))

    def run(*values):
        with ntf.portable():
            with tf.GradientTape() as tape:
                tape.watch(values)
                y = getattr(ntf, name)(**dict(zip(op.differentiable, values)), **options)
            return y, tape.gradient(y, values, output_gradients=g,
                                    unconnected_gradients=tf.UnconnectedGradients.ZERO)

    values = [tf.constant(inputs[n]) for n in op.differentiable]
    y, grads = run(*values)
    y_xla, grads_xla = tf.function(run, jit_compile=True)(*values)
    _assert_matches_the_core(problem, name, (y, y_xla), grads)
    _assert_matches_the_core(problem, name, (y_xla,), grads_xla)
