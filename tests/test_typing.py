"""The typed public API: every public function of npool and npool.jax is annotated, the
package ships py.typed, and mypy passes over src/npool (the configuration is pyproject's)."""
import importlib.resources
import inspect
import pathlib
import subprocess
import sys

import pytest

import npool

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _unannotated(namespace, names):
    missing = []
    for name in names:
        obj = getattr(namespace, name)
        if inspect.isclass(obj) or not callable(obj):
            continue
        signature = inspect.signature(obj)
        params = [p for p, v in signature.parameters.items() if v.annotation is inspect._empty]
        if params or signature.return_annotation is inspect._empty:
            missing.append((name, params))
    return missing


def test_every_public_function_is_annotated():
    assert _unannotated(npool, npool.__all__) == []


def test_every_jax_function_is_annotated():
    jax_adapter = pytest.importorskip("npool.jax")
    assert _unannotated(jax_adapter, jax_adapter.__all__) == []


def test_the_package_says_it_is_typed():
    assert importlib.resources.files("npool").joinpath("py.typed").is_file()


def test_mypy_passes():
    pytest.importorskip("mypy")
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
