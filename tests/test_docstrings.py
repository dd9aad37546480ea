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


def test_the_jax_functions_too():
    jax_adapter = pytest.importorskip("npool.jax")
    functions = [name for name in jax_adapter.__all__
                 if callable(getattr(jax_adapter, name)) and name != "JaxOps"]
    for name in functions:
        errors = [code for code, _ in validate.validate(f"npool.jax.{name}")["errors"]
                  if code in REQUIRED and not (name == "portable" and code == "RT01")]
        assert errors == [], (name, errors)
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        for test in doctest.DocTestFinder(recurse=False).find(
                getattr(jax_adapter, name), name, globs={"npool": npool}):
            runner.run(test)
        assert runner.failures == 0, name


@pytest.mark.parametrize("name", ["Problem", "assert_close", "check_op", "check_problem",
                                  "problems", "reference"])
def test_npool_testing_too(name):
    """npool.testing is a product: its public API is documented and typed like the core's."""
    import inspect
    import npool.testing
    errors = [code for code, _ in validate.validate(f"npool.testing.{name}")["errors"]
              if code in REQUIRED]
    assert errors == [], errors
    obj = getattr(npool.testing, name)
    function = obj.__init__ if inspect.isclass(obj) else obj
    signature = inspect.signature(function)
    assert all(p.annotation is not inspect._empty for n, p in signature.parameters.items()
               if n != "self")
    assert signature.return_annotation is not inspect._empty
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    for test in doctest.DocTestFinder(recurse=False).find(obj, name,
                                                          globs={"np": np, "npool": npool}):
        runner.run(test)
    assert runner.failures == 0
