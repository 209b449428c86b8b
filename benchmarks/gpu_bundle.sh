#!/usr/bin/env bash
# Bring the project's Python dependencies to a GPU machine that has a CUDA torch but no network,
# and run the GPU check there from the checkout (no `pip install -e .`, which would need
# setuptools from an index and may try to resolve torch).
#
#   benchmarks/gpu_bundle.sh download [--python 3.11] [--geo] [--dir .whl]
#       where pip reaches PyPI: wheels of the project's dependencies (pyproject.toml
#       [project.dependencies]; --geo adds rasterio for the 8000x8000 GeoTIFF prediction, ~50 MB
#       more) for CPython --python (default: this python's) on manylinux x86_64, into --dir
#       (default .whl, git-ignored). Frameworks are not bundled: the GPU machine brings its torch.
#   benchmarks/gpu_bundle.sh install [--dir .whl]
#       on the GPU machine, offline: pip install --no-index --find-links DIR of those wheels
#       (packages already installed, e.g. numpy beside torch, are kept), then python -m align.env.
#   benchmarks/gpu_bundle.sh check [gpu_check options]
#       PYTHONPATH=<checkout> python benchmarks/gpu_check.py ...
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PYTHON="${PYTHON:-python3}"
command="${1:-}"
[ $# -gt 0 ] && shift
dir=".whl"
python_version="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
geo=0
while [ $# -gt 0 ] && [ "$command" != "check" ]; do
    case "$1" in
        --dir) dir="$2"; shift 2 ;;
        --python) python_version="$2"; shift 2 ;;
        --geo) geo=1; shift ;;
        *) echo "gpu_bundle.sh: error: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done

# The dependency list, read from pyproject.toml (one place for it).
requirements() {
    "$PYTHON" - "$ROOT/pyproject.toml" <<'EOF'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.S | re.M)
if block is None:
    sys.exit("gpu_bundle.sh: error: pyproject.toml: no [project] dependencies list")
print("\n".join(re.findall(r'"([^"]+)"', block.group(1))))
EOF
}

case "$command" in
    download)
        mapfile -t packages < <(requirements)
        if [ "$geo" = 1 ]; then packages+=("rasterio>=1.3"); fi
        mkdir -p "$dir"
        "$PYTHON" -m pip download --dest "$dir" --only-binary=:all: --implementation cp \
            --python-version "$python_version" --platform manylinux2014_x86_64 \
            --platform manylinux_2_28_x86_64 "${packages[@]}"
        echo "wheels for CPython $python_version in $dir ($(du -sh "$dir" | cut -f1)); on the GPU machine:"
        echo "  benchmarks/gpu_bundle.sh install --dir $dir && benchmarks/gpu_bundle.sh check"
        ;;
    install)
        [ -d "$dir" ] || { echo "gpu_bundle.sh: error: $dir: no such folder (run download first)" >&2; exit 2; }
        mapfile -t packages < <(requirements)
        if compgen -G "$dir/rasterio-*.whl" > /dev/null; then packages+=("rasterio>=1.3"); fi
        "$PYTHON" -m pip install --no-index --find-links "$dir" "${packages[@]}"
        # The report says which framework sees the GPU; its exit status 2 (a mistake it names
        # with a fix) does not undo the installation above.
        PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m align.env \
            || echo "gpu_bundle.sh: python -m align.env reported a problem (above); benchmarks/gpu_check.py still runs" >&2
        ;;
    check)
        PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" benchmarks/gpu_check.py "$@"
        ;;
    *)
        echo "usage: benchmarks/gpu_bundle.sh download|install|check [options] (see the header of $0)" >&2
        exit 2
        ;;
esac
