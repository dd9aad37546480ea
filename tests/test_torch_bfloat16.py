"""bfloat16 in npool.torch: every op on bfloat16 CPU tensors against the float64 reference at
bfloat16's tolerance (npool.testing.check_op, forward and autograd backward), without copies
between torch and the core, under CPU autocast, and a bfloat16 model that trains."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import npool.torch as nt  # noqa: E402
from npool import testing  # noqa: E402
from npool.torch._tensors import from_core, to_core  # noqa: E402

FUNCTIONS = {op: getattr(nt, op) for op in testing.OPS}
CPU = torch.empty(0)


def as_tensor(a):
    return from_core(a.copy(order="C"), CPU) if isinstance(a, np.ndarray) else a


def torch_op(op):
    """npool.torch's function for op with npool's core signature on NumPy inputs, and its
    backward through torch.autograd (a number lam becomes a 0-d tensor so it gets a grad)."""
    function = FUNCTIONS[op]

    def forward(*args, **options):
        return to_core(function(*(as_tensor(a) for a in args), **{
            k: as_tensor(v) for k, v in options.items()}))

    def backward(grad_out, *args, **options):
        inputs = [as_tensor(a) if isinstance(a, np.ndarray) else
                  torch.tensor(a, dtype=as_tensor(args[0]).dtype) for a in args]
        inputs = [t.detach().requires_grad_() for t in inputs]
        y = function(*inputs, **{k: as_tensor(v) for k, v in options.items()})
        y.backward(as_tensor(grad_out))
        return tuple(to_core(t.grad) for t in inputs)
    return forward, backward


@pytest.mark.parametrize("op", testing.OPS)
def test_every_op_in_bfloat16_matches_the_reference(op):
    testing.check_op(op, *torch_op(op), max_examples=25, dtypes=("bfloat16",),
                     layouts=("contiguous", "channels_last"))  # every window geometry


def test_bfloat16_tensors_reach_the_core_without_a_copy():
    x = torch.randn(2, 3, 4, 4).bfloat16()
    core = to_core(x)
    assert core.dtype.name == "bfloat16" and core.ctypes.data == x.data_ptr()
    back = from_core(core, x)
    assert back.dtype == torch.bfloat16 and back.data_ptr() == x.data_ptr()
    channels_last = x.to(memory_format=torch.channels_last)
    y = nt.soft_pool2d(channels_last, 2)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_runs_the_pools_in_the_regions_dtype(dtype):
    """CPU autocast runs the ops in the region's dtype (bfloat16 by default, float16 when asked),
    eagerly and compiled; float64 tensors are left alone, as autocast does."""
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        for y in (nt.soft_pool2d(x, 2), nt.maxent_pool2d(x, 0.5, 2), nt.global_lse_pool(x),
                  nt.weldon_pool(x, 3), nt.global_avg_pool(x)):
            assert y.dtype == dtype
        v = nt.NetVLAD(8, 8, 4, 5)(x[:, 0])
        (y.float().sum() + v.float().sum()).backward()
        assert nt.soft_pool2d(x.detach().double(), 2).dtype == torch.float64
        compiled = torch.compile(lambda t: nt.soft_pool2d(t, 2) + 1, fullgraph=True)
        assert compiled(x.detach()).dtype == dtype
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


def test_a_bfloat16_model_trains():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), nt.SoftPool2d(2), torch.nn.Conv2d(4, 2, 3),
        nt.GlobalKMaxPool2d(2)).to(torch.bfloat16)
    x = torch.randn(16, 1, 8, 8).bfloat16()
    target = (x.float().mean((1, 2, 3)) > 0).long()
    optimizer = torch.optim.Adam(model.parameters(), 3e-2)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(x).float(), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses
