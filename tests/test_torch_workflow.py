"""The rest of the "what works where" table: torch.export, TorchScript tracing (works) and
scripting (refused, documented)."""
import warnings

import pytest

torch = pytest.importorskip("torch")

import npool.torch as nt  # noqa: E402


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), nt.SoftPool2d(3, 2, 1),
                               nt.MaxEntPool2d(3, 2), nt.WeldonPool2d(2, 1)).eval()


def test_torch_export_keeps_npool_ops_and_runs():
    model, x = _model(), torch.randn(2, 3, 12, 12)
    program = torch.export.export(model, (x,))
    targets = {str(node.target) for node in program.graph.nodes}
    assert {"npool.soft_pool.default", "npool.maxent_pool.default",
            "npool.weldon_pool.default"} <= targets
    torch.testing.assert_close(program.module()(x), model(x))


def test_torchscript_trace_works_and_script_is_refused():
    model, x = _model(), torch.randn(2, 3, 12, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x)
        other = torch.randn(1, 3, 10, 10)
        torch.testing.assert_close(traced(other), model(other))
        with pytest.raises(Exception):
            torch.jit.script(model)  # npool's modules are Python (TorchScript is deprecated)
