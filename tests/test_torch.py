"""npool.torch: custom ops (opcheck, gradcheck, torch.compile), functions and modules."""
import copy
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import npool  # noqa: E402
import npool.torch as nt  # noqa: E402
from npool.torch._tensors import to_core, torch_matmul  # noqa: E402
from npool.testing.strategies import channels_last, local_pool_inputs  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and npool.cuda_available() else [])
FUNCTIONS = {1: nt.soft_pool1d, 2: nt.soft_pool2d, 3: nt.soft_pool3d}
MODULES = {1: nt.SoftPool1d, 2: nt.SoftPool2d, 3: nt.SoftPool3d}
CORE = {1: npool.soft_pool1d_forward, 2: npool.soft_pool2d_forward, 3: npool.soft_pool3d_forward}
CASES = [(1, (3, 2, 1, True)), (2, ((2, 3), (1, 2), (1, 1), False)), (3, (2, None, 0, False)),
         (2, (2, None, 0, False))]


def torch_channels_last(t):
    return t.movedim(1, -1).contiguous().movedim(-1, 1)


def sample(nd, device, dtype=torch.float64, layout="contiguous", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, 3) + tuple(range(5, 5 + nd)), generator=g, dtype=dtype).to(device)
    if layout == "unbatched channels_last":
        return x[0].movedim(0, -1).contiguous().movedim(-1, 0)
    return torch_channels_last(x) if layout == "channels_last" else x


def window_lists(nd, args):
    kernel, stride, padding, ceil_mode = args
    as_list = lambda v: list(v) if isinstance(v, tuple) else [v] * nd  # noqa: E731
    kernel = as_list(kernel)
    padding = [p for p in as_list(padding) for _ in range(2)]  # before and after
    return (kernel, kernel if stride is None else as_list(stride), padding, ceil_mode,
            [1] * nd, [])  # no dilation, no adaptive output_size


# ------------------------------------------------------------------ the custom ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "unbatched channels_last"])
@pytest.mark.parametrize("nd,args", CASES)
def test_opcheck(device, layout, nd, args):
    x = sample(nd, device, layout=layout)
    window = window_lists(nd, args)
    torch.library.opcheck(torch.ops.npool.soft_pool.default, (x, *window))
    y = torch.ops.npool.soft_pool(x, *window)
    g = torch.randn(y.shape, dtype=y.dtype, device=device)
    torch.library.opcheck(torch.ops.npool.soft_pool_backward.default, (g, x, *window))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("nd,args", CASES)
def test_gradcheck(device, layout, nd, args):
    x = sample(nd, device, layout=layout).requires_grad_(True)
    kernel, stride, padding, ceil_mode = args
    assert torch.autograd.gradcheck(
        lambda v: FUNCTIONS[nd](v, kernel, stride, padding, ceil_mode), (x,))


@given(local_pool_inputs(dtype=np.float32, paddings=("symmetric",)), st.booleans())
def test_results_equal_the_numpy_core(problem, use_channels_last):
    x, nd, (kernel, stride, padding, ceil_mode) = problem
    if use_channels_last:
        x = channels_last(x, x.ndim == nd + 2)
    xt = torch.from_numpy(x).requires_grad_(True)
    y = FUNCTIONS[nd](xt, kernel, stride, padding, ceil_mode)
    np.testing.assert_array_equal(y.detach().numpy(), CORE[nd](x, kernel, stride, padding,
                                                               ceil_mode))
    g = np.random.default_rng(0).standard_normal(y.shape).astype(np.float32)
    y.backward(torch.from_numpy(g))
    backward = getattr(npool, f"soft_pool{nd}d_backward")
    np.testing.assert_array_equal(xt.grad.numpy(), backward(g, x, kernel, stride, padding,
                                                            ceil_mode))


def test_cpu_tensors_reach_the_core_without_copies():
    x = torch_channels_last(torch.randn(2, 3, 8, 8))
    assert np.shares_memory(to_core(x), x.numpy())
    y = nt.soft_pool2d(x, 2)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    x3 = torch.randn(1, 2, 4, 4, 4).to(memory_format=torch.channels_last_3d)
    assert nt.soft_pool3d(x3, 2).is_contiguous(memory_format=torch.channels_last_3d)


def test_float16_and_unbatched():
    x = torch.randn(3, 8, 8, dtype=torch.float16)
    y = nt.soft_pool2d(x, 2)
    assert y.dtype == torch.float16 and y.shape == (3, 4, 4)
    np.testing.assert_array_equal(y.numpy(), npool.soft_pool2d_forward(x.numpy(), 2))


def test_errors_are_npools():
    with pytest.raises(ValueError, match="padding must be at most half"):
        nt.soft_pool2d(torch.randn(1, 1, 4, 4), 2, padding=2)
    with pytest.raises(TypeError, match="ceil_mode must be a bool"):
        nt.soft_pool2d(torch.randn(1, 1, 4, 4), 2, ceil_mode=1)
    with pytest.raises(TypeError, match="x must have dtype"):
        nt.soft_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.int32), 2)


# ------------------------------------------------------------------ modules
def test_modules_mirror_max_pool():
    assert repr(nt.SoftPool2d(3, 2, 1, 1, False, True)) == \
        "SoftPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=True)"
    for nd in (1, 2, 3):
        x = sample(nd, "cpu", torch.float32)
        for dilation in (1, 2):
            pool, reference = MODULES[nd](3, 2, 1, dilation, ceil_mode=True), getattr(
                torch.nn, f"MaxPool{nd}d")(3, 2, 1, dilation, ceil_mode=True)
            assert pool(x).shape == reference(x).shape
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        nt.SoftPool2d(2, dilation=0)
    with pytest.raises(ValueError, match="return_indices must be False"):
        nt.SoftPool2d(2, return_indices=True)
    with pytest.raises(ValueError, match="padding must be at most half"):
        nt.SoftPool2d(2, padding=2)
    assert list(nt.SoftPool2d(2).parameters()) == []


def _tiny_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), nt.SoftPool2d(2),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), nt.SoftPool2d(2, ceil_mode=True),
        torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 2))


def _blob_task(n=64):
    """Images with one bright blob, labelled by the half it lies in."""
    g = torch.Generator().manual_seed(1)
    x = 0.1 * torch.randn(n, 1, 14, 14, generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    rows = torch.randint(2, 12, (n,), generator=g)
    cols = torch.randint(1, 6, (n,), generator=g) + 7 * labels
    for i in range(n):
        x[i, 0, rows[i] - 1:rows[i] + 1, cols[i] - 1:cols[i] + 1] += 2.0
    return x, labels


def _train(model, steps, lr):
    """Adam on the blob task; the losses, step by step."""
    x, labels = _blob_task()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses


def test_tiny_cnn_trains():
    losses = _train(_tiny_cnn(), 30, 1e-2)
    assert losses[-1] < 0.5 * losses[0], losses


def test_torch_compile_fullgraph():
    model = _tiny_cnn()
    x, _labels = _blob_task(8)
    compiled = torch.compile(model, fullgraph=True)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    expected, result = model(x1), compiled(x2)
    torch.testing.assert_close(result, expected)
    expected.sum().backward()
    result.sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)


# ------------------------------------------------------------------ CUDA
@pytest.mark.skipif("cuda" not in DEVICES, reason="no GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_autocast_runs_in_the_regions_dtype(dtype):
    x = torch.randn(2, 3, 8, 8, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=dtype):
        y = nt.soft_pool2d(x, 2)
        z = nt.global_lse_pool(x)
    assert y.dtype == z.dtype == dtype and y.device.type == "cuda"
    torch.testing.assert_close(y.float(), nt.soft_pool2d(x.detach().to(dtype), 2).float())
    (y.float().sum() + z.float().sum()).backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


@pytest.mark.skipif("cuda" not in DEVICES, reason="no GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_half_precision_tensors(dtype):
    """16-bit CUDA tensors run the __half/__nv_bfloat16 kernels without copies and agree with
    the CPU (both compute in float32 and round once), channels-last kept."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 8, dtype=dtype)
    x_gpu = x.cuda().to(memory_format=torch.channels_last).requires_grad_()
    pool = nt.NetVLAD(8, 9, 4, 5, add_batch_norm=False).to(dtype)
    for function in (lambda t: nt.soft_pool2d(t, 3, 2, 1, True),
                     lambda t: nt.maxent_pool2d(t, 0.7, 2), nt.global_lse_pool,
                     lambda t: nt.weldon_pool(t, 3), lambda t: pool.to(t.device)(t[:, 0])):
        y = function(x_gpu)
        assert y.dtype == dtype and y.device.type == "cuda"
        torch.testing.assert_close(y.cpu().float(), function(x).float(), rtol=2e-2, atol=2e-2)
        grad, = torch.autograd.grad(y.float().sum(), x_gpu)
        assert grad.dtype == dtype and torch.isfinite(grad.float()).all()


@pytest.mark.skipif("cuda" not in DEVICES, reason="no GPU")
def test_cuda_results_equal_cpu_on_a_side_stream():
    x = torch.randn(4, 8, 32, 32, device="cuda", requires_grad=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = nt.soft_pool2d(x * 2, 3, 2, 1)
        y.sum().backward()
    side.synchronize()
    x_cpu = x.detach().cpu().requires_grad_(True)
    y_cpu = nt.soft_pool2d(x_cpu * 2, 3, 2, 1)
    y_cpu.sum().backward()
    torch.testing.assert_close(y.cpu(), y_cpu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.cpu(), x_cpu.grad, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ global pools
GLOBAL = [
    ("max", lambda v, **kw: nt.global_max_pool(v, **kw), npool.global_max_pool_forward, {}),
    ("avg", lambda v, **kw: nt.global_avg_pool(v, **kw), npool.global_avg_pool_forward, {}),
    ("lse", lambda v, **kw: nt.global_lse_pool(v, beta=-0.7, **kw),
     npool.global_lse_pool_forward, {"beta": -0.7}),
    ("kmax", lambda v, **kw: nt.global_kmax_pool(v, k=0.3, **kw),
     npool.global_kmax_pool_forward, {"k": 0.3}),
    ("weldon", lambda v, **kw: nt.weldon_pool(v, kmax=3, kmin=2, alpha=0.5, **kw),
     npool.weldon_pool_forward, {"kmax": 3, "kmin": 2, "alpha": 0.5}),
]
GLOBAL_OPS = [
    (torch.ops.npool.global_max_pool.default, (True,)),
    (torch.ops.npool.global_avg_pool.default, (False,)),
    (torch.ops.npool.global_lse_pool.default, (0.5, True)),
    (torch.ops.npool.weldon_pool.default, (3, 2, 0.5, False)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("op,arguments", GLOBAL_OPS, ids=["max", "avg", "lse", "weldon"])
def test_global_opcheck(device, layout, op, arguments):
    x = sample(2, device, layout=layout)
    torch.library.opcheck(op, (x, *arguments))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name,function,core,kwargs", GLOBAL, ids=[g[0] for g in GLOBAL])
def test_global_gradcheck_and_core_equality(device, layout, name, function, core, kwargs):
    x = sample(2, device, layout=layout).requires_grad_(True)
    keepdims = name in ("avg", "kmax")
    assert torch.autograd.gradcheck(lambda v: function(v, keepdims=keepdims), (x,))
    y = function(x, keepdims=keepdims)
    expected = core(x.detach().cpu().numpy(), keepdims=keepdims, **kwargs)
    np.testing.assert_allclose(y.detach().cpu().numpy(), expected, rtol=1e-12)
    grad, = torch.autograd.grad(y.sum(), x)
    assert grad.stride() == x.stride()  # the gradient keeps x's layout


def test_global_modules_train_and_compile():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), nt.SoftPool2d(2),
        torch.nn.Conv2d(8, 2, 3, padding=1), nt.WeldonPool(kmax=0.2, kmin=0.2, alpha=0.7))
    losses = _train(model, 80, 3e-2)
    assert losses[-1] < 0.5 * losses[0], losses
    x, _ = _blob_task()
    for module in (nt.GlobalMaxPool(), nt.GlobalAvgPool(keepdims=True), nt.GlobalLSEPool(2.0),
                   nt.GlobalKMaxPool(3), nt.WeldonPool(2)):
        compiled = torch.compile(module, fullgraph=True)
        torch.testing.assert_close(compiled(x), module(x))
    assert repr(nt.WeldonPool(2, alpha=0.5)) == \
        "WeldonPool(kmax=2, kmin=None, alpha=0.5, keepdims=False)"
    with pytest.raises(ValueError, match="k as a float is a fraction"):
        nt.GlobalKMaxPool(1.5)


# ------------------------------------------------------------------ Max-Entropy pooling
LAM_SHAPES = {"scalar": (), "channel": (3, 1, 1), "sample_channel": (2, 3, 1, 1),
              "position": (4, 4), "sample": (2, 1, 1, 1)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", list(LAM_SHAPES))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_maxent_opcheck_gradcheck_and_core(device, mode, layout):
    g = torch.Generator().manual_seed(5)
    x = torch.randn((2, 3, 7, 6), generator=g, dtype=torch.float64).to(device)
    x = torch_channels_last(x) if layout == "channels_last" else x
    lam = (torch.rand(LAM_SHAPES[mode], generator=g, dtype=torch.float64) * 3 - 1).to(device)
    window = ([3, 3], [2, 2], [1, 1, 1, 1], True, [1, 1], [])
    torch.library.opcheck(torch.ops.npool.maxent_pool.default, (x, lam, *window))
    grad = torch.randn(2, 3, 4, 4, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.npool.maxent_pool_backward.default,
                          (grad, x, lam, *window))
    xg, lg = x.clone().requires_grad_(True), lam.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v, l: nt.maxent_pool2d(v, l, 3, 2, 1, True), (xg, lg))
    y = nt.maxent_pool2d(x, lam, 3, 2, 1, True)
    np.testing.assert_array_equal(y.cpu().numpy(), npool.maxent_pool2d_forward(
        x.cpu().numpy(), lam.cpu().numpy(), 3, 2, 1, True))


def test_gfgp_module_trains_and_its_batchnorms_follow_the_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), nt.MaxEntPool2d(8, 2),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        nt.MaxEntPool2d(8, 2, ceil_mode=True, lam="channel"),
        torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 2))
    gfgp = model[2]
    running = gfgp.branch[2].running_mean.clone()
    losses = _train(model, 30, 1e-2)
    assert losses[-1] < 0.5 * losses[0], losses
    assert not torch.equal(gfgp.branch[2].running_mean, running)  # train mode updates them
    assert model[5].lam.grad is not None and gfgp.branch[1].weight.grad is not None
    x, _ = _blob_task(8)
    x.requires_grad_(True)
    model.eval()
    frozen = gfgp.branch[2].running_mean.clone()
    y1, y2 = model(x), model(x[:4])
    assert torch.equal(gfgp.branch[2].running_mean, frozen)  # eval mode leaves them
    torch.testing.assert_close(y2, y1[:4])  # eval: each sample on its own
    y1.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(nt.MaxEntPool2d(3, 2, lam=1.0)(x), nt.soft_pool2d(x, 2))
    with pytest.raises(ValueError, match="lam must be 'gfgp', 'channel' or a number"):
        nt.MaxEntPool2d(3, 2, lam="learned")
    with pytest.raises(ValueError, match="activation must be"):
        nt.MaxEntPool2d(3, 2, activation="tanh")


# ------------------------------------------------------------------ set pools (LOUPE)
SET_LAYERS = [nt.NetVLAD, nt.NetRVLAD, nt.NetFV, nt.SoftDBoW]


def set_problem(seed=0, B=3, M=5, D=4, K=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, M, D, generator=g, dtype=dtype)
    a = torch.softmax(torch.randn(B, M, K, generator=g, dtype=dtype), -1)
    params = [torch.randn(D, K, generator=g, dtype=dtype),
              1 + 0.3 * torch.randn(D, K, generator=g, dtype=dtype)]
    lengths = torch.tensor([M, 2, 1][:B])
    mask = torch.arange(M)[None, :] < lengths[:, None]
    return x, a, params, mask


def set_calls(x, a, params, mask):
    """(name, function of the differentiable inputs, those inputs)."""
    c, cw = params
    return [("netvlad", lambda x, a, c: nt.netvlad_pool(x, a, c, mask), (x, a, c)),
            ("netrvlad", lambda x, a: nt.netrvlad_pool(x, a, mask), (x, a)),
            ("netfv", lambda x, a, mu, cw: nt.netfv_pool(x, a, mu, cw, mask), (x, a, c, cw)),
            ("soft_dbow", lambda a: nt.soft_dbow_pool(a, mask), (a,))]


@pytest.mark.parametrize("masked", [False, True])
def test_set_ops_opcheck(masked):
    x, a, (c, cw), mask = set_problem(dtype=torch.float32)
    mask = mask if masked else None
    ops = torch.ops.npool
    out, norms = ops.netvlad_pool(x, a, c, mask)
    g = torch.randn_like(out)
    for op, args in [
            (ops.netvlad_pool, (x, a, c, mask)), (ops.netvlad_pool, (x, a, None, mask)),
            (ops.netvlad_pool_backward, (g, x, a, c, mask, out, norms)),
            (ops.netfv_pool, (x, a, c, cw, mask)),
            (ops.netfv_pool_backward, (torch.cat([g, g], 1), x, a, c, cw, mask)),
            (ops.soft_dbow_pool, (a, mask)),
            (ops.soft_dbow_pool_backward, (torch.randn(3, 3), a, mask)),
            (ops.context_gating, (x, torch.randn(4, 4), torch.randn(4))),
            (ops.context_gating_backward, (torch.randn_like(x), x, torch.randn(4, 4),
                                           torch.randn(4)))]:
        torch.library.opcheck(op.default, args)


@pytest.mark.parametrize("masked", [False, True])
def test_set_ops_gradcheck_and_core_equality(masked):
    x, a, params, mask = set_problem()
    mask = mask if masked else None
    for name, function, inputs in set_calls(x, a, params, mask):
        inputs = tuple(t.clone().requires_grad_() for t in inputs)
        assert torch.autograd.gradcheck(function, inputs), name
        core = getattr(npool, f"{name}_pool_forward")
        extra = {} if mask is None else {"mask": mask.numpy()}
        arrays = [t.detach().numpy() for t in inputs]
        result = function(*inputs).detach().numpy()
        if name != "soft_dbow":  # the adapter runs the core's products on torch's BLAS
            np.testing.assert_allclose(result, core(*arrays, **extra), rtol=1e-12, atol=1e-15)
            extra["matmul"] = torch_matmul
        np.testing.assert_array_equal(result, core(*arrays, **extra))
        if masked:  # masked samples get no gradient
            function(*inputs).sum().backward()
            assert torch.all(inputs[0].grad[~mask] == 0)
    w, b = torch.randn(4, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(nt.context_gating, tuple(
        t.clone().requires_grad_() for t in (x, w, b)))


def test_set_functions_refuse_bad_masks():
    x, a, (c, _), mask = set_problem()
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        nt.netvlad_pool(x, a, c, mask.double())
    with pytest.raises(ValueError, match=r"mask must have shape \(B, M\)"):
        nt.netrvlad_pool(x, a, mask[:, :3])


def loupe_netvlad(x, layer):
    """LOUPE's NetVLAD graph (add_batch_norm=False, gating=False), as its TF code reads: the
    contraction taken as (B, K, D) and transposed, D-major flatten, then hidden1_weights."""
    a = torch.softmax(x @ layer.cluster_weights + layer.cluster_biases, -1)
    vlad = torch.matmul(a.transpose(1, 2), x).transpose(1, 2)  # (B, D, K)
    vlad = vlad - a.sum(1, keepdim=True) * layer.cluster_weights2[None]
    vlad = torch.nn.functional.normalize(vlad, dim=1, eps=1e-6)
    vlad = torch.nn.functional.normalize(vlad.reshape(len(x), -1), dim=1, eps=1e-6)
    return vlad @ layer.hidden1_weights


def test_loupe_weight_layout_and_initialisers():
    torch.manual_seed(0)
    layer = nt.NetVLAD(64, 5, 16, 8, gating=False, add_batch_norm=False).double()
    x = torch.randn(3, 5, 64, dtype=torch.float64)
    torch.testing.assert_close(layer(x), loupe_netvlad(x, layer))
    torch.testing.assert_close(layer(x.reshape(15, 64)), layer(x))  # LOUPE's (B * M, D) input
    stds = {"cluster_weights": 1 / 8, "cluster_biases": 1 / 8, "cluster_weights2": 1 / 8,
            "hidden1_weights": 1 / 4}
    for name, std in stds.items():
        assert abs(getattr(layer, name).std().item() / std - 1) < 0.1, name
    fv = nt.NetFV(64, 5, 16, 8)
    assert abs(fv.covar_weights.mean().item() - 1) < 0.05
    assert fv.hidden1_weights.shape == (2 * 64 * 16, 8)
    gate = nt.ContextGating(400, add_batch_norm=False)
    assert abs(gate.gating_weights.std().item() * 20 - 1) < 0.1


@pytest.mark.parametrize("layer_class", SET_LAYERS)
@pytest.mark.parametrize("add_batch_norm", [True, False])
def test_set_layers_masked_batch_equals_lists_one_by_one(layer_class, add_batch_norm):
    torch.manual_seed(1)
    layer = layer_class(4, 5, 3, 6, gating=True, add_batch_norm=add_batch_norm).double()
    x, _, _, mask = set_problem(2)
    x = torch.where(mask[..., None], x, 1e3)  # junk in the padding
    layer.train()
    layer(x, mask).sum().backward()  # one training step's statistics: real samples only
    layer.eval()
    batch = layer(x, mask)
    for b, n in enumerate(mask.sum(1).tolist()):
        torch.testing.assert_close(batch[b:b + 1], layer(x[b:b + 1, :n]))


def test_masked_batch_norm_uses_the_real_samples_only():
    z = torch.randn(3, 5, 4, dtype=torch.float64)
    mask = torch.rand(3, 5) > 0.4
    mask[:, 0] = True
    masked = nt.MaskedBatchNorm1d(4).double()
    plain = torch.nn.BatchNorm1d(4).double()
    with torch.no_grad():
        masked.weight.uniform_(0.5, 2)
        plain.weight.copy_(masked.weight)
    torch.testing.assert_close(masked(z, mask)[mask], plain(z[mask]))
    torch.testing.assert_close(masked.running_mean, plain.running_mean)
    torch.testing.assert_close(masked.running_var, plain.running_var)
    z.requires_grad_()
    masked(torch.where(mask[..., None], z, 1e30), mask).sum().backward()
    assert torch.all(z.grad[~mask] == 0)


def toy_sets(n_sets, generator, max_len=6, dim=8):
    """Sets of 2..max_len vectors; the class is which of two directions the vectors follow."""
    labels = torch.randint(0, 2, (n_sets,), generator=generator)
    directions = torch.eye(dim)[:2] * 2
    x = torch.randn(n_sets, max_len, dim, generator=generator) + directions[labels][:, None]
    lengths = torch.randint(2, max_len + 1, (n_sets,), generator=generator)
    mask = torch.arange(max_len)[None, :] < lengths[:, None]
    return torch.where(mask[..., None], x, 0), mask, labels


@pytest.mark.parametrize("layer_class", SET_LAYERS)
def test_set_layers_train_on_a_toy_set_classification(layer_class):
    torch.manual_seed(2)
    x, mask, labels = toy_sets(64, torch.Generator().manual_seed(3))
    model = torch.nn.ModuleDict({"pool": layer_class(8, 6, 4, 16),
                                 "head": torch.nn.Linear(16, 2)})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model["head"](model["pool"](x, mask)), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_set_layer_compiles_fullgraph():
    torch.manual_seed(4)
    layer = nt.NetVLAD(8, 6, 4, 5, add_batch_norm=False).eval()
    x, mask, _ = toy_sets(4, torch.Generator().manual_seed(5))
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager, graph = layer(x1, mask), compiled(x2, mask)
    torch.testing.assert_close(graph, eager)
    eager.sum().backward()
    graph.sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)


@pytest.mark.skipif("cuda" not in DEVICES, reason="no GPU")
@pytest.mark.parametrize("masked", [False, True])
def test_set_ops_and_layers_on_cuda_equal_cpu(masked):
    """On CUDA the set ops run on npool's own kernels: gradcheck there, and the same results
    as the CPU for the ops and for every LOUPE layer (forward and parameter gradients)."""
    x, a, params, mask = set_problem(B=3, M=7, D=20, K=17)
    mask = mask if masked else None
    cuda_mask = None if mask is None else mask.cuda()
    for (name, function, inputs), (_, cuda_function, _) in zip(
            set_calls(x, a, params, mask), set_calls(x, a, params, cuda_mask)):
        cuda_inputs = tuple(t.cuda().requires_grad_() for t in inputs)
        assert torch.autograd.gradcheck(cuda_function, cuda_inputs), name
        cpu_inputs = tuple(t.clone().requires_grad_() for t in inputs)
        torch.testing.assert_close(cuda_function(*cuda_inputs).cpu(), function(*cpu_inputs))
    w, b = torch.randn(20, 20, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
    assert torch.autograd.gradcheck(nt.context_gating, tuple(
        t.cuda().requires_grad_() for t in (x, w, b)))
    xs, set_mask, _ = toy_sets(16, torch.Generator().manual_seed(6))
    for layer_class in SET_LAYERS:
        torch.manual_seed(7)
        layer = layer_class(8, 6, 4, 16)
        cuda_layer = copy.deepcopy(layer).cuda()
        y, y_cuda = layer(xs, set_mask), cuda_layer(xs.cuda(), set_mask.cuda())
        torch.testing.assert_close(y_cuda.cpu(), y, rtol=1e-4, atol=1e-5)
        y.square().sum().backward()
        y_cuda.square().sum().backward()
        for (name, p), p_cuda in zip(layer.named_parameters(), cuda_layer.parameters()):
            torch.testing.assert_close(p_cuda.grad.cpu(), p.grad, rtol=1e-3, atol=1e-5,
                                       msg=f"{layer_class.__name__}.{name}")


def test_set_layers_check_their_arguments():
    with pytest.raises(ValueError, match="cluster_size must be >= 1"):
        nt.NetVLAD(8, 6, 0, 5)
    with pytest.raises(TypeError, match="feature_size must be an int"):
        nt.NetRVLAD(8.0, 6, 4, 5)
    layer = nt.SoftDBoW(8, 6, 4, 5)
    with pytest.raises(ValueError, match="divisible by max_samples=6"):
        layer(torch.randn(10, 8))
    with pytest.raises(ValueError, match=r"x must be \(B, M, feature_size\)"):
        layer(torch.randn(2, 6, 7))


# ------------------------------------------------------------------ torch.compile(dynamic=True)
class _GFGPNet(torch.nn.Module):
    """A conv, then Max-Ent pooling with the GFGP branch (GAP, 1x1 conv, BatchNorm, ReLU, 1x1
    conv, BatchNorm, sigmoid)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nt.MaxEntPool2d(4, 2)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x)))


_SET_DYNAMIC = nt.NetVLAD(4, 64, 3, 5, add_batch_norm=False)

# name: a function of an (N, C, H, W) tensor (C = 4); every op family
DYNAMIC = {
    "soft_pool1d": lambda x: nt.soft_pool1d(x[:, :, 0], 3, 2, 1),
    "soft_pool2d": lambda x: nt.soft_pool2d(x, 2),
    "soft_pool2d 3x3/2 pad 1": lambda x: nt.soft_pool2d(x, 3, 2, 1),
    "soft_pool3d": lambda x: nt.soft_pool3d(x[:, :, None].expand(-1, -1, 2, -1, -1), 2),
    "maxent_pool2d lam number": lambda x: nt.maxent_pool2d(x, 0.7, 2),
    "maxent_pool2d lam per channel": lambda x: nt.maxent_pool2d(
        x, torch.linspace(0.5, 2.0, 4).reshape(4, 1, 1), 2),
    "maxent_pool2d lam from a branch": lambda x: nt.maxent_pool2d(
        x, torch.sigmoid(x.mean((2, 3), keepdim=True) * 3), 2),
    "global_max_pool": nt.global_max_pool,
    "global_avg_pool": nt.global_avg_pool,
    "global_lse_pool": lambda x: nt.global_lse_pool(x, 2.0),
    "global_kmax_pool": lambda x: nt.global_kmax_pool(x, 3),
    "weldon_pool": lambda x: nt.weldon_pool(x, 2, 1),
    "NetVLAD": lambda x: _SET_DYNAMIC(x.flatten(2).transpose(1, 2)),  # (N, H * W, C)
    "context_gating": lambda x: nt.context_gating(x.flatten(2), torch.eye(x.shape[2] *
                                                                             x.shape[3]) * 0.5,
                                                  torch.zeros(x.shape[2] * x.shape[3])),
}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "permuted inside"])
@pytest.mark.parametrize("name", list(DYNAMIC) + ["MaxEntPool2d GFGP net"])
def test_torch_compile_dynamic_shapes(name, layout):
    """torch.compile(dynamic=True) of every op family, in both memory layouts and on a view
    made inside the compiled function (NHWC permuted to NCHW, which the backward saves), with
    the batch size (and the spatial size) changing between calls: the values and gradients of
    eager mode."""
    torch._dynamo.reset()  # each case compiles its own `call` (one code object for all cases)
    torch.manual_seed(0)
    if name in DYNAMIC:
        eager_function = compiled_function = DYNAMIC[name]
    else:  # a module with state (BatchNorm's running statistics): one copy for each side
        eager_function = _GFGPNet()
        compiled_function = copy.deepcopy(eager_function)

    def through(function):
        def call(t):
            if layout == "permuted inside":
                t = t.permute(0, 3, 1, 2)
            return function(t)
        return call

    eager = through(eager_function)
    compiled = torch.compile(through(compiled_function), dynamic=True,
                             fullgraph=name in DYNAMIC)
    for n, size in ((4, 8), (6, 8), (3, 10)):
        x = torch.randn(n, 4, size, size)
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
        elif layout == "permuted inside":
            x = x.permute(0, 2, 3, 1).contiguous()
        x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
        expected = eager(x_eager)
        weights = torch.randn(expected.shape)
        (expected * weights).sum().backward()
        result = compiled(x_compiled)
        torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6)
        (result * weights).sum().backward()
        torch.testing.assert_close(x_compiled.grad, x_eager.grad, rtol=1e-4, atol=1e-5)


def test_gfgp_on_a_batch_of_one_says_what_to_do():
    pool = nt.MaxEntPool2d(4, 2)
    with pytest.raises(ValueError, match=r"batch of at least 2.*\.eval\(\)"):
        pool(torch.randn(1, 4, 8, 8))
    assert pool(torch.randn(2, 4, 8, 8)).shape == (2, 4, 4, 4)
    assert pool.eval()(torch.randn(1, 4, 8, 8)).shape == (1, 4, 4, 4)  # running statistics


def test_double_backward_gives_no_warning():
    """The decomposition's index arrays (read-only caches) are copied into tensors, not shared
    with a warning (PyTorch warns once per process: a fresh one)."""
    code = ("import warnings, torch, npool.torch as nt\n"
            "warnings.simplefilter('error')\n"
            "x = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)\n"
            "for module in (nt.SoftPool2d(2), nt.MaxEntPool2d(4, 3, 2, 1).double()):\n"
            "    g, = torch.autograd.grad(module(x).pow(2).sum(), x, create_graph=True)\n"
            "    g.sum().backward()\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
