#!/usr/bin/env bash
# The GPU measurements in one run: bench/gpu.sh DIR [--cpu]   (bench/gpu.py says what it runs)
#
# On the GPU machine (Python 3.12 with torch, timm, numpy 2 ... but no registry), the packages it
# lacks travel as wheels in .whl/ (PyAV and ai-edge-litert: docs/development.md says how to
# fetch them); they are installed into /tmp/site and fer runs
# from this checkout. --cpu runs the same steps on small media on the CPU (CI runs it).
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: bench/gpu.sh DIR [--cpu]" >&2; exit 2; }
cd "$(dirname "$0")/.."
if [[ " $* " != *" --cpu "* ]] && compgen -G ".whl/*.whl" >/dev/null; then  # the GPU machine's wheels
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
    # Wheels slimmed to fit what travels (bench/slim_wheel.sh): unpacked as pip would lay them out.
    for t in .whl/*.tar.gz; do [ -e "$t" ] && tar xzf "$t" -C /tmp/site; done
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 bench/gpu.py "$@"
