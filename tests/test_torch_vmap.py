"""torch.vmap over npool.torch ops where more than x is mapped (every op with a mapped x is in
test_conformance.py): a batching rule for each, equal to mapping by hand, without PyTorch's
"no batching rule" fallback warning."""
import pytest

torch = pytest.importorskip("torch")

import npool.torch as nt  # noqa: E402


def _cases():
    """What the conformance suite (test_conformance.py::test_torch_vmap_conforms, every op of
    the table, a mapped axis on x) does not draw: unbatched samples, and a mapped temperature."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, 3, 8, 8)
    return {
        "soft_pool2d unbatched samples": (lambda t: nt.soft_pool2d(t, 2), (x[:, 0],)),
        "maxent_pool2d with lam mapped too": (lambda t, lam: nt.maxent_pool2d(t, lam, 2),
                                              (x, torch.rand(3, 1, 3, 1, 1))),
        "global_gem_pool with p mapped too": (lambda t, p: nt.global_gem_pool(t, p),
                                              (x, torch.rand(3, 3) + 1)),
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
