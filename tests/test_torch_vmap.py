"""torch.vmap over every npool.torch op: a batching rule for each (the mapped axis folds into
the op's batch axis, or the rule loops), equal to mapping by hand, without PyTorch's
"no batching rule" fallback warning."""
import pytest

torch = pytest.importorskip("torch")

import npool.torch as nt  # noqa: E402


def _cases():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 3, 8, 8)
    xs = torch.randn(3, 2, 5, 3)
    a = torch.softmax(torch.randn(3, 2, 5, 2), -1)
    c = torch.randn(3, 2)
    return {
        "soft_pool2d": (lambda t: nt.soft_pool2d(t, 3, 2, 1, True), (x,)),
        "soft_pool2d unbatched samples": (lambda t: nt.soft_pool2d(t, 2), (x[:, 0],)),
        "maxent_pool2d": (lambda t, lam: nt.maxent_pool2d(t, lam, 2),
                          (x, torch.rand(3, 1, 3, 1, 1))),
        "global_max_pool": (nt.global_max_pool, (x,)),
        "global_avg_pool": (lambda t: nt.global_avg_pool(t, True), (x,)),
        "global_lse_pool": (lambda t: nt.global_lse_pool(t, 2.0), (x,)),
        "global_kmax_pool": (lambda t: nt.global_kmax_pool(t, 3), (x,)),
        "weldon_pool": (lambda t: nt.weldon_pool(t, 3, 2, 0.5), (x,)),
        "netvlad_pool": (lambda t, s: nt.netvlad_pool(t, s, c), (xs, a)),
        "netrvlad_pool": (nt.netrvlad_pool, (xs, a)),
        "netfv_pool": (lambda t, s: nt.netfv_pool(t, s, c, c + 2), (xs, a)),
        "soft_dbow_pool": (nt.soft_dbow_pool, (a,)),
        "context_gating": (lambda t: nt.context_gating(t, torch.eye(3), torch.zeros(3)), (xs,)),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_vmap_equals_mapping_by_hand_without_the_fallback(name, capfd):
    function, args = _cases()[name]
    mapped = torch.vmap(function)(*args)
    by_hand = torch.stack([function(*(a[i] for a in args)) for i in range(args[0].shape[0])])
    torch.testing.assert_close(mapped, by_hand, rtol=0, atol=0)
    assert "batching rule" not in capfd.readouterr().err


def test_torch_func_grad_is_refused_by_pytorch():
    """Documented as unsupported: PyTorch refuses functorch transforms of the autograd.Function
    that register_autograd generates (use torch.autograd.grad)."""
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(RuntimeError, match="setup_context"):
        torch.func.grad(lambda t: nt.soft_pool2d(t, 2).sum())(x)
