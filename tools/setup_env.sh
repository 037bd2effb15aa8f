#!/usr/bin/env bash
# Builds the project's environment in $1 (default .venv) from nothing. Idempotent.
# The route and its reasons are in README.md ("Installation").
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
D2_VERSION=0.7.2

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# Local find-links indexes print one harmless warning per package: keep the log readable.
quiet() { "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true; return "${PIPESTATUS[0]}"; }

quiet "${PIP[@]}" install -q -r requirements.txt

# detectron2 is not on the index under its own name. sal-detectron2 is a repackaging of its
# main branch, tagged cp310 only; its Python code runs on 3.11. Installed without its (already
# pinned above) dependencies, then the stray top-level `tools/` package and the cp310 `_C`
# extension (which cannot load here and which nothing in this project needs) are removed.
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('sal-detectron2') != '$D2_VERSION')" 2>/dev/null \
   && ! "$VENV/bin/python" -c "import detectron2" 2>/dev/null; then
  quiet "${PIP[@]}" install -q --no-deps --only-binary=:all: --python-version 3.10 \
    --target "$SITE" --upgrade "sal-detectron2==$D2_VERSION"
  rm -rf "$SITE/tools" "$SITE"/detectron2/_C*.so
fi

quiet "${PIP[@]}" install -q --no-deps --no-build-isolation -e .
"${PIP[@]}" check
"$VENV/bin/python" -c "import hpf, detectron2, torch, torchvision; print('environment ok:', 'detectron2', detectron2.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
