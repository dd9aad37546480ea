"""Second derivatives through npool.torch: the decompositions the backward ops are
differentiated through equal the ops, and a training step with a gradient penalty (gradgradcheck
of every op of the table: test_conformance.py::test_torch_second_order_conforms)."""
import pytest

torch = pytest.importorskip("torch")

import npool.torch as nt  # noqa: E402
from npool.torch import _standard_ops  # noqa: E402

F64 = dict(dtype=torch.float64)


def _inputs():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 4, **F64)
    xs = torch.randn(2, 4, 3, **F64)
    a = torch.softmax(torch.randn(2, 4, 2, **F64), -1)
    c = torch.randn(3, 2, **F64)
    return x, xs, a, c


MASK = torch.tensor([[True, True, False, True], [True, True, True, True]])


def test_decompositions_equal_the_ops():
    x, xs, a, c = _inputs()
    torch.testing.assert_close(_standard_ops.windowed_softmax_pool(x, 1.0, [3, 2], [2, 2],
                                                                     [1, 1, 1, 1], True),
                               nt.soft_pool2d(x, (3, 2), 2, 1, True))
    y, index = nt.weldon_pool(x, 3, 2, 0.7, return_indices=True)
    torch.testing.assert_close(_standard_ops.indexed_selection_pool(x, index, 3, 2, 0.7, False), y)
    torch.testing.assert_close(_standard_ops.fv_pool(xs, a, c, c + 1, MASK),
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
