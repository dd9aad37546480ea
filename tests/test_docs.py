"""The documentation site: it builds with Sphinx with warnings as errors, and every Python
example on every page runs (each page in its own process, its blocks in order, as a reader
would run them; blocks that say they need a GPU run only where there is one). The migration
guide's blocks run in tests/test_migration_guide.py, with the originals' files they load."""
import ast
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "```python" in p.read_text()
               and p.name != "migration.md" and "_build" not in p.parts)
# What a page's examples may need beyond npool and its test extra: a page whose examples import
# one of these (or pick it as Keras' backend) is skipped where it is not installed. Any other
# missing module fails the test: a test dependency must be in the test extra.
OPTIONAL_MODULES = ("torch", "tensorflow", "jax", "keras", "flax", "onnx", "onnxruntime",
                    "onnxscript", "skimage", "matplotlib", "pycuda", "cupy")


def optional_modules_needed(text):
    """The optional modules imported by the blocks of ``text`` that run without a GPU (and the
    Keras backend the page picks), in the order they appear."""
    needed = []
    for block in (b.split("```")[0] for b in text.split("```python")[1:]):
        if block.lstrip().startswith("# needs a GPU"):
            continue
        names = []
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Import):
                names += [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module.split(".")[0])
        names += re.findall(r"KERAS_BACKEND\W+(\w+)", block)
        needed += [n for n in names if n in OPTIONAL_MODULES and n not in needed]
    return needed


def skip_unless_installed(modules):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the examples need {', '.join(missing)}, not installed")


RUNNER = """
import pathlib, sys
text = pathlib.Path(sys.argv[1]).read_text()
gpu = sys.argv[2] == "1"
namespace = {"__name__": "docs_example"}
for number, block in enumerate(b.split("```")[0] for b in text.split("```python")[1:]):
    if block.lstrip().startswith("# needs a GPU") and not gpu:
        print(f"block {number}: skipped (no GPU)")
        continue
    exec(compile(block, f"{sys.argv[1]}[block {number}]", "exec"), namespace)
    print(f"block {number}: ran")
"""


def test_the_site_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q",
                             "-b", "html", str(DOCS), str(tmp_path / "html")],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-6000:]
    for page in ("index", "api", "getting-started", "ops/softpool", "frameworks/jax",
                 "gallery/README", "changelog"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page
    if importlib.util.find_spec("keras") is None:
        return
    # npool.keras' layers are in the index under their own names, with their constructors'
    # signatures (not Keras' Layer.__new__(*args, **kwargs))
    api = (tmp_path / "html" / "api.html").read_text()
    index = (tmp_path / "html" / "genindex.html").read_text()
    for name in ("SoftPooling2D", "MaxEntPooling2D", "GlobalKMaxPool", "NetVLAD"):
        assert f'id="npool.keras.{name}"' in api and f"npool.keras.{name}" in index, name
        signature = api.split(f'id="npool.keras.{name}"')[1].split("</dt>")[0]
        assert "*args" not in signature and "kwargs" in signature, (name, signature[:500])


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_every_example_on_the_page_runs(page):
    import npool
    skip_unless_installed(optional_modules_needed(page.read_text()))
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run([sys.executable, "-c", RUNNER, str(page),
                             "1" if npool.cuda_available() else "0"],
                            capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "ran" in result.stdout or "skipped (no GPU)" in result.stdout


def test_the_readme_examples_run():
    """README's examples, one per framework, in order in one process (the Keras block picks
    the JAX backend unless KERAS_BACKEND says otherwise)."""
    skip_unless_installed(optional_modules_needed((ROOT / "README.md").read_text()))
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run([sys.executable, "-c", RUNNER, str(ROOT / "README.md"), "0"],
                            capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("ran") >= 4


def test_a_page_names_what_its_examples_need():
    text = '''
```python
import os
os.environ.setdefault("KERAS_BACKEND", "jax")
import keras, numpy as np
from npool.testing import check_op
import torch.nn.functional as F
```
```python
# needs a GPU
import cupy
```'''
    assert sorted(optional_modules_needed(text)) == ["jax", "keras", "torch"]
