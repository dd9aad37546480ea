"""npool.tf's public functions and layers document their arguments and an example as Keras'
do, and the examples run (doctest)."""
import doctest
import inspect
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

import npool  # noqa: E402
import npool.tf  # noqa: E402,F401


@pytest.mark.parametrize("name", npool.tf.__all__)
def test_documented_and_examples_run(name):
    obj = getattr(npool.tf, name)
    doc = obj.__doc__ or ""
    assert "Example:" in doc, name
    if inspect.signature(obj).parameters:
        assert "Args:" in doc, name
    assert ("Returns:" in doc) or ("shape:" in doc) or ("Call arguments:" in doc), name
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(obj, name, globs={"np": np, "tf": tf, "npool": npool})
    assert any(test.examples for test in tests), name
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{name}: {runner.failures} example(s) failed"
