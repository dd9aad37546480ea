"""The op table (npool/_op_table.py) agrees with the code it describes: the core's functions and
their parameters, npool.testing's references and problems, the adapters' public functions."""
import importlib
import inspect

import numpy as np
import pytest

import npool
import npool.testing
from npool._op_table import OPS, keras_name, kernels, ops_of
from npool.testing.references import REFERENCES


def test_every_op_has_a_row_and_the_references_agree():
    assert tuple(OPS) == npool.testing.OPS
    assert set(OPS) == set(REFERENCES)
    assert [op.name for family in ("local", "global", "set") for op in ops_of(family)] == \
        list(OPS)
    assert kernels() == tuple(dict.fromkeys(op.kernel for op in OPS.values()))
    # ops that share a kernel (the rest lower to their own)
    shared = {name: op.kernel for name, op in OPS.items() if op.kernel != name}
    assert shared == {**{f"{prefix}{kind}_pool{nd}d": f"{kind}_pool"
                         for prefix in ("", "adaptive_") for kind in ("soft", "maxent")
                         for nd in (1, 2, 3)},
                      "global_kmax_pool": "weldon_pool", "netrvlad_pool": "netvlad_pool"}
    with pytest.raises(ValueError, match="family must be"):
        ops_of("windowed")


@pytest.mark.parametrize("name", list(OPS))
def test_the_core_has_the_table_s_signature(name):
    op = OPS[name]
    forward = inspect.signature(getattr(npool, f"{name}_forward")).parameters
    backward = inspect.signature(getattr(npool, f"{name}_backward")).parameters
    arrays = op.differentiable + op.other_arrays
    assert list(forward)[:len(arrays)] == list(arrays)
    assert set(op.static) <= set(forward)
    assert list(backward)[0] == "grad_out"
    assert list(backward)[1:1 + len(arrays)] == list(arrays)
    flags = {"indices": "return_indices", "stats": "return_stats", "norms": "return_norms"}
    for extra in op.outputs[1:]:
        assert flags[extra] in forward
    saved = {"indices": "indices", "stats": "stats", "y": "output", "norms": "norms"}
    for item in op.saved:
        assert saved[item] in backward
    assert (op.nd is not None) == (op.family == "local")


@pytest.mark.parametrize("name", list(OPS))
def test_the_backward_returns_one_gradient_per_differentiable_input(name):
    from hypothesis import given, settings
    from npool.testing.strategies import problems

    op = OPS[name]

    @settings(max_examples=3, deadline=None)
    @given(problems(name, dtypes=("float64",), layouts=("contiguous",), extreme=False))
    def check(problem):
        grads = getattr(npool, f"{name}_backward")(problem.grad_out, *problem.args,
                                                   **problem.options)
        grads = grads if isinstance(grads, tuple) else (grads,)
        assert len(grads) == len(op.differentiable)
        for input_name, grad in zip(op.differentiable, grads):
            assert np.shape(grad) == np.shape(problem.inputs[input_name])

    check()


@pytest.mark.parametrize("adapter", ["torch", "tf", "jax"])
def test_every_adapter_has_every_op_with_the_core_s_arguments(adapter):
    module = pytest.importorskip(f"npool.{adapter}")
    for name, op in OPS.items():
        parameters = inspect.signature(getattr(module, name)).parameters
        arrays = op.differentiable + op.other_arrays
        assert list(parameters)[:len(arrays)] == list(arrays), (adapter, name)
        assert set(op.static) <= set(parameters), (adapter, name)


def test_every_kernel_is_a_torch_custom_op_with_its_backward():
    pytest.importorskip("torch")
    importlib.import_module("npool.torch")
    import torch

    for kernel in kernels():
        assert hasattr(torch.ops.npool, kernel) and hasattr(torch.ops.npool, f"{kernel}_backward")


@pytest.mark.parametrize("adapter", ["torch", "keras"])
def test_every_layer_of_the_table_exists(adapter):
    """The table's layer names exist in npool.torch (``SoftPool2d``, ``GlobalMaxPool`` and
    ``GlobalMaxPool2d``, ``NetVLAD``) and npool.keras (Keras' naming: ``SoftPooling2D``,
    ``GlobalMaxPooling2D``); an op without a layer says so (None)."""
    module = pytest.importorskip(f"npool.{adapter}")
    for op in OPS.values():
        if op.layer is None:
            continue
        base = keras_name(op.layer) if adapter == "keras" else op.layer
        names = [f"{base}{op.nd}{'D' if adapter == 'keras' else 'd'}"] if op.family == "local" \
            else [base] if op.family == "set" else \
            [op.layer] + [f"{base}{nd}{'D' if adapter == 'keras' else 'd'}" for nd in (1, 2, 3)]
        for name in names:
            assert hasattr(module, name), (adapter, op.name, name)
    assert [op.name for op in OPS.values() if op.layer is None] == [
        "maxent_pool1d", "maxent_pool3d", "adaptive_maxent_pool1d", "adaptive_maxent_pool2d",
        "adaptive_maxent_pool3d"]
