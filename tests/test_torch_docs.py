"""npool.torch's public functions and modules document Args, Shape and Examples as PyTorch's
do, and their examples run (doctest)."""
import doctest

import pytest

torch = pytest.importorskip("torch")

import npool.torch as nt  # noqa: E402


@pytest.mark.parametrize("name", nt.__all__)
def test_documented_and_examples_run(name):
    obj = getattr(nt, name)
    doc = obj.__doc__ or ""
    assert "Args:" in doc and "Examples::" in doc, name
    if name != "load_loupe_checkpoint":
        assert "Shape:" in doc, name
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(obj, name, globs={"torch": torch, "nt": nt})
    assert any(test.examples for test in tests), name
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{name}: {runner.failures} example(s) failed"
