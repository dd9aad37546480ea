"""Every public function of npool has a numpydoc docstring - parameters matching its
signature, a Returns section (unless it returns nothing) and examples - and the examples run."""
import doctest

import numpy as np
import pytest

import npool

validate = pytest.importorskip("numpydoc.validate")
# missing docstring, undocumented or unknown parameters, no Returns section, no Examples
REQUIRED = ("GL08", "PR01", "PR02", "RT01", "EX01")


@pytest.mark.parametrize("name", npool.__all__)
def test_numpydoc_sections(name):
    errors = [(code, text) for code, text in validate.validate(f"npool.{name}")["errors"]
              if code in REQUIRED]
    assert errors == [], errors


@pytest.mark.parametrize("name", npool.__all__)
def test_examples_run(name):
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(getattr(npool, name), name, globs={"np": np, "npool": npool})
    assert any(test.examples for test in tests)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0
