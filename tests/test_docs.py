"""The documentation site: it builds with Sphinx with warnings as errors, and every Python
example on every page runs (each page in its own process, its blocks in order, as a reader
would run them; blocks that say they need a GPU run only where there is one). The migration
guide's blocks run in tests/test_migration_guide.py, with the originals' files they load."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "```python" in p.read_text()
               and p.name != "migration.md" and "_build" not in p.parts)
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


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_every_example_on_the_page_runs(page):
    import npool
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
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    pytest.importorskip("keras")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run([sys.executable, "-c", RUNNER, str(ROOT / "README.md"), "0"],
                            capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("ran") >= 4
