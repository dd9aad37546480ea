"""What every public docstring and signature of npool meets, shared by the tests of the core's
and the adapters' APIs: numpydoc sections that match the signature, examples that run, and
annotations on every parameter and return value."""
import doctest
import inspect

# missing docstring, undocumented or unknown parameters, no Returns section, no Examples
REQUIRED = ("GL08", "PR01", "PR02", "RT01", "EX01")
# and for the adapters, written numpydoc-first: only numpydoc's sections, in numpydoc's order
SECTIONS = ("GL06", "GL07")


def numpydoc_errors(qualname, codes=REQUIRED, allowed=()):
    """numpydoc's validation errors of the object named ``qualname`` among ``codes``."""
    from numpydoc.validate import validate
    return [(code, text) for code, text in validate(qualname)["errors"]
            if code in codes and code not in allowed]


def failed_examples(obj, name, globs):
    """Run the examples of ``obj``'s own docstring; the count of examples and of failures."""
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs=dict(globs))
    for test in tests:
        runner.run(test)
    return sum(len(test.examples) for test in tests), runner.failures


def unannotated(obj, methods=("__init__", "forward", "call")):
    """The parameters (and ``"return"``) of a function - of a class: of those of its constructor
    and call methods that npool defines - that have no annotation."""
    if inspect.isclass(obj):
        owners = {m: next((c for c in obj.__mro__ if m in vars(c)), None) for m in methods}
        functions = [getattr(obj, m) for m, owner in owners.items()
                     if owner is not None and owner.__module__.startswith("npool")]
    else:
        functions = [obj]
    missing = []
    for function in functions:
        signature = inspect.signature(function)
        missing += [f"{function.__name__}({name})" for name, p in signature.parameters.items()
                    if name != "self" and p.annotation is inspect.Parameter.empty]
        if signature.return_annotation is inspect.Signature.empty:
            missing.append(f"{function.__name__} -> ?")
    return missing
