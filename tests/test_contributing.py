"""CONTRIBUTING.md names real things: every path it mentions exists, and every private name it
tells a contributor to use (``_empty_in_layout``, ``NPOOL_EXPORT_LAYOUT``, ...) is defined in
the sources."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "CONTRIBUTING.md").read_text()


def _spans():
    return re.findall(r"`([^`\n]+)`", GUIDE)


def test_every_path_it_mentions_exists():
    missing = []
    for span in _spans():
        path = span.split("::")[0]
        if "/" not in path or " " in path or "<" in path or path.startswith(("/", "npool.")):
            continue
        if not (ROOT / path).exists():
            missing.append(path)
    assert not missing, f"CONTRIBUTING.md mentions paths that do not exist: {missing}"


def test_every_private_name_it_mentions_is_defined():
    sources = "\n".join(p.read_text() for pattern in ("src/**/*.py", "src/**/*.pyx",
                                                        "src/**/*.pxd", "src/**/*.h",
                                                        "src/**/*.cu", "src/**/*.cuh")
                        for p in ROOT.glob(pattern))
    modules = {p.stem for p in ROOT.glob("src/**/*") if p.suffix in (".py", ".pyx", ".pxd",
                                                                      ".h", ".cu", ".cuh")}
    names = set()
    for span in _spans():
        if "/" in span:  # a path: the test above
            continue
        for name in re.findall(r"(?<![\w.<>}])(_[A-Za-z]\w*|NPOOL_[A-Z_]+)", span):
            if not name.startswith("__") and name not in modules:
                names.add(name)
    undefined = sorted(n for n in names
                       if not re.search(rf"(def|class|#define|cdef[^\n]*)\s+{n}\b|^{n}\s*=",
                                        sources, re.M))
    assert not undefined, f"CONTRIBUTING.md names what the sources do not define: {undefined}"
