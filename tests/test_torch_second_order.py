"""Second derivatives through every npool.torch op (gradgradcheck in float64; the backward ops
are differentiated through each op's decomposition into standard PyTorch ops), and a training
step with a gradient penalty."""
import pytest

torch = pytest.importorskip("torch")

import npool.torch as nt  # noqa: E402
from npool.torch import _decompositions  # noqa: E402

F64 = dict(dtype=torch.float64)


def _inputs():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 4, **F64)
    xs = torch.randn(2, 4, 3, **F64)
    a = torch.softmax(torch.randn(2, 4, 2, **F64), -1)
    c = torch.randn(3, 2, **F64)
    return x, xs, a, c


MASK = torch.tensor([[True, True, False, True], [True, True, True, True]])
CASES = {
    "soft_pool1d": (lambda x: nt.soft_pool1d(x, 2, 1, 1, True), lambda x, xs, a, c: (xs,)),
    "soft_pool2d": (lambda x: nt.soft_pool2d(x, 3, 2, 1, True), lambda x, xs, a, c: (x,)),
    "soft_pool3d": (lambda x: nt.soft_pool3d(x, (1, 2, 2)),
                    lambda x, xs, a, c: (x[:, :, None, :4],)),
    "maxent_pool2d": (lambda x, lam: nt.maxent_pool2d(x, lam, 2, 1),
                      lambda x, xs, a, c: (x, torch.rand(1, 3, 1, 1, **F64) + 0.2)),
    "maxent_pool1d (number lam, unbatched)": (lambda x: nt.maxent_pool1d(x, -0.7, 3, 2, 1),
                                              lambda x, xs, a, c: (xs[0],)),
    "global_max_pool": (nt.global_max_pool, lambda x, xs, a, c: (x,)),
    "global_avg_pool": (lambda x: nt.global_avg_pool(x, True), lambda x, xs, a, c: (x,)),
    "global_lse_pool": (lambda x: nt.global_lse_pool(x, 1.5), lambda x, xs, a, c: (x,)),
    "global_kmax_pool": (lambda x: nt.global_kmax_pool(x, 3), lambda x, xs, a, c: (x,)),
    "weldon_pool": (lambda x: nt.weldon_pool(x, 3, 2, 0.6), lambda x, xs, a, c: (x,)),
    "netvlad_pool": (lambda x, a, c: nt.netvlad_pool(x, a, c, MASK),
                     lambda x, xs, a, c: (xs, a, c)),
    "netrvlad_pool": (nt.netrvlad_pool, lambda x, xs, a, c: (xs, a)),
    "netfv_pool": (lambda x, a, mu, cw: nt.netfv_pool(x, a, mu, cw, MASK),
                   lambda x, xs, a, c: (xs, a, c, c.abs() + 0.5)),
    "soft_dbow_pool": (lambda a: nt.soft_dbow_pool(a, MASK), lambda x, xs, a, c: (a,)),
    "context_gating": (nt.context_gating,
                       lambda x, xs, a, c: (xs, torch.randn(3, 3, **F64), torch.randn(3, **F64))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradgradcheck(name):
    function, make = CASES[name]
    inputs = tuple(t.detach().requires_grad_() for t in make(*_inputs()))
    assert torch.autograd.gradgradcheck(function, inputs)


def test_decompositions_equal_the_ops():
    x, xs, a, c = _inputs()
    torch.testing.assert_close(_decompositions.windowed_softmax_pool(x, 1.0, [3, 2], [2, 2],
                                                                     [1, 1], True),
                               nt.soft_pool2d(x, (3, 2), 2, 1, True))
    y, index = nt.weldon_pool(x, 3, 2, 0.7, return_indices=True)
    torch.testing.assert_close(_decompositions.selection_pool(x, index, 3, 2, 0.7, False), y)
    torch.testing.assert_close(_decompositions.fv_pool(xs, a, c, c + 1, MASK),
                               nt.netfv_pool(xs, a, c, c + 1, MASK))


def test_a_gradient_penalty_training_step():
    """WGAN-GP style: the penalty differentiates d(critic)/d(input) once more."""
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), nt.SoftPool2d(2),
                                 torch.nn.Conv2d(4, 4, 3, padding=1), nt.GlobalLSEPool2d(2.0),
                                 torch.nn.Linear(4, 1)).double()
    optimizer = torch.optim.SGD(critic.parameters(), lr=1e-2)
    x = torch.randn(4, 1, 8, 8, **F64, requires_grad=True)
    score = critic(x).sum()
    (grad_x,) = torch.autograd.grad(score, x, create_graph=True)
    penalty = ((grad_x.flatten(1).norm(dim=1) - 1) ** 2).mean()
    optimizer.zero_grad()
    (score + 10 * penalty).backward()
    grads = [p.grad for p in critic.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert grads[0].abs().sum() > 0
    optimizer.step()
