"""The decomposition of every op (npool/_decompositions.py: standard array operations, what the
adapters put in graphs that must stand alone) against npool.testing's float64 references, run
with NumPy."""
import numpy as np
import pytest
from hypothesis import given, settings

from npool import _checks, _decompositions, testing
from npool._decompositions import NumpyOps


def _without_indices(problem):
    options = {k: v for k, v in problem.options.items()
               if k not in ("return_indices", "return_norms")}
    return testing.Problem(problem.op, problem.inputs, options, problem.grad_out)


@pytest.mark.parametrize("op", testing.OPS)
@settings(max_examples=40, deadline=None)
@given(data=__import__("hypothesis").strategies.data())
def test_decompositions_match_the_references(op, data):
    problem = _without_indices(data.draw(testing.problems(op)))  # float32 and float64
    with np.errstate(all="ignore"):
        y = _decompositions.forward(op, NumpyOps, *problem.args, **problem.options)
    testing.assert_close(y, problem)


def test_window_cells_leave_out_padding_and_ceil_overhang():
    window = _checks.WindowArgs(1, 3, 2, 1, True)
    index, real, out = _decompositions.window_cells((4,), window)
    assert out == (3,)  # windows at -1, 1, 3 over cells 0..3: real cells first
    np.testing.assert_array_equal(real, [[True, True, False], [True, True, True],
                                         [True, False, False]])
    np.testing.assert_array_equal(index[real], [0, 1, 1, 2, 3, 3])


def test_window_cells_of_adaptive_windows():
    """PyTorch's adaptive windows of 3 outputs over 5 cells: [0, 2), [1, 4), [3, 5)."""
    window = _checks.adaptive_windows(1, 3, (5,))
    assert isinstance(window, _checks.AdaptiveWindows) and window.kernel == (3,)
    index, real, out = _decompositions.window_cells((5,), window)
    assert out == (3,)
    np.testing.assert_array_equal(real, [[True, True, False], [True, True, True],
                                         [True, True, False]])
    np.testing.assert_array_equal(index[real], [0, 1, 1, 2, 3, 3, 4])
    regular = _checks.adaptive_windows(2, (2, None), (6, 3))  # 6 -> 2 and 3 -> 3 divide
    assert not isinstance(regular, _checks.AdaptiveWindows)
    assert (regular.kernel, regular.stride) == ((3, 1), (3, 1))


def test_softpool_does_not_overflow_at_500():
    x = np.array([[[500.0, 499.0, -500.0, 0.0]]], np.float32)
    y = _decompositions.forward("soft_pool1d", NumpyOps, x, 2)
    expected = testing.reference("soft_pool1d")[0](x, 2)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-30)


def test_return_indices_is_refused():
    with pytest.raises(ValueError, match="output only"):
        _decompositions.forward("global_max_pool", NumpyOps, np.zeros((1, 1, 2)), return_indices=True)
