"""ONNX export: torch.onnx.export(model, args, dynamo=True) of models holding every npool.torch
module runs in onnxruntime and agrees with npool in float32. While exporting, the ops record
their decomposition into standard PyTorch ops (max-subtracted, so the deployed model does not
overflow where npool does not)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import npool.torch as nt  # noqa: E402


def run_onnx(model, args, **export):
    program = torch.onnx.export(model, args, dynamo=True, verbose=False, **export)
    session = ort.InferenceSession(program.model_proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feed = {name: a.numpy() for name, a in zip(names, args)}
    return session.run(None, feed), program.model_proto


class Pool(torch.nn.Module):
    """A conv (so the export has a real graph around the pool) and the module under test."""

    def __init__(self, pool, channels=3):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 1)
        self.pool = pool

    def forward(self, x):
        return self.pool(self.conv(x))


def agree(model, args, rtol=1e-5, atol=1e-5):
    model.eval()
    with torch.no_grad():
        expected = model(*args)
    (got, *_), proto = run_onnx(model, args)
    np.testing.assert_allclose(got, expected.numpy(), rtol=rtol, atol=atol)
    assert not any(node.domain == "npool" or node.op_type.startswith("npool")
                   for node in proto.graph.node)
    return proto


LOCAL = {
    "SoftPool2d(2)": lambda: nt.SoftPool2d(2),
    "SoftPool2d(3, 2, padding=1, ceil_mode=True)": lambda: nt.SoftPool2d(3, 2, 1,
                                                                          ceil_mode=True),
    "MaxEntPool2d gfgp": lambda: nt.MaxEntPool2d(3, 3, 2, 1),
    "MaxEntPool2d channel": lambda: nt.MaxEntPool2d(3, 2, lam="channel"),
    "MaxEntPool2d fixed": lambda: nt.MaxEntPool2d(3, (2, 3), 1, (1, 1), True, lam=-0.5),
    "GlobalMaxPool2d": lambda: nt.GlobalMaxPool2d(),
    "GlobalAvgPool2d": lambda: nt.GlobalAvgPool2d(keepdims=True),
    "GlobalLSEPool2d": lambda: nt.GlobalLSEPool2d(2.0),
    "GlobalKMaxPool2d": lambda: nt.GlobalKMaxPool2d(0.2),
    "WeldonPool2d": lambda: nt.WeldonPool2d(3, 2, 0.7),
}


@pytest.mark.parametrize("name", list(LOCAL))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_local_and_global_pools_export(name, layout):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 10)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    agree(Pool(LOCAL[name]()), (x,))


def test_soft_pool_1d_3d_and_extreme_values():
    x = torch.randn(2, 3, 4, 6, 6) * 500  # +-500: no overflow in the deployed model
    agree(torch.nn.Sequential(nt.SoftPool3d((2, 2, 3), padding=(1, 0, 1))), (x,), rtol=1e-5,
          atol=1e-3)
    agree(torch.nn.Sequential(nt.SoftPool1d(3, 2, 1, ceil_mode=True)), (x[:, :, 0, 0],),
          atol=1e-3)


class Loupe(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, mask):
        return self.layer(x, mask)


@pytest.mark.parametrize("cls", [nt.NetVLAD, nt.NetRVLAD, nt.NetFV, nt.SoftDBoW])
@pytest.mark.parametrize("add_batch_norm", [True, False])
def test_loupe_layers_export_with_masks(cls, add_batch_norm):
    torch.manual_seed(0)
    layer = cls(8, 6, 4, 5, gating=True, add_batch_norm=add_batch_norm)
    x = torch.randn(3, 6, 8)
    mask = torch.arange(6) < torch.tensor([6, 3, 1])[:, None]
    agree(Loupe(layer), (x, mask))


def test_context_gating_and_the_opset():
    torch.manual_seed(0)
    proto = agree(torch.nn.Sequential(nt.ContextGating(6, add_batch_norm=False)),
                  (torch.randn(4, 6),))
    assert [o.version for o in proto.opset_import if o.domain == ""] == [20]  # README


def test_the_exporter_records_no_npool_op_but_eager_still_runs_npool():
    model = torch.nn.Sequential(nt.SoftPool2d(2))
    program = torch.onnx.export(model, (torch.randn(1, 1, 4, 4),), dynamo=True)
    nodes = program.model_proto.graph.node
    assert all(node.domain in ("", "ai.onnx") for node in nodes), {n.domain for n in nodes}
    assert not any("pool" in node.op_type.lower() for node in nodes)
    assert torch.ops.npool.soft_pool.default in {
        node.target for node in torch.export.export(model, (torch.randn(1, 1, 4, 4),))
        .graph.nodes}
