"""Sphinx configuration of npool's documentation site (``sphinx-build -W -b html docs out``).

Sphinx, because the API reference comes from the docstrings (autodoc, with napoleon reading
the numpydoc sections of every public docstring, core and adapters alike) and the pages are the
repository's own Markdown (MyST), so the same files read well on GitHub and build into the site.
"""
import npool

project = "npool"
author = "The npool developers"
copyright = "2026, the npool developers"
version = release = npool.__version__  # one version: npool/__init__.py

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
napoleon_numpy_docstring = True
napoleon_google_docstring = False
autodoc_default_options = {"members": True, "undoc-members": False}
autodoc_mock_imports = ["pycuda"]
html_theme = "alabaster"
html_title = f"npool {release}"
suppress_warnings = ["myst.header"]
