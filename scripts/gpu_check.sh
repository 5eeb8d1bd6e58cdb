#!/usr/bin/env bash
# The prepared GPU check: one H100/H200, at most 8 minutes, from a plain checkout (no `pip install -e`, no internet).
#
#   scripts/gpu_check.sh OUT [--dry-run] [--model DIR] [--natural-model DIR] [--reference DIR] [--deadline-s S]
#                        [--only SECTION,...]
#   make gpu-check OUT=DIR [DRY=1] [MODEL=DIR]
#
# Writes OUT/gpu_check.json, OUT/gpu_check.md, OUT/gpu_check.log and OUT/gpu_check_pytest.log (4 files, one
# folder: they all come back from the device machine's $OUT). The sections and their order are described in
# scripts/gpu_check.py; --dry-run runs them all on CPU at toy sizes, skipping what needs CUDA.
#
# On the device machine (python3 = Python 3.12, torch 2.11, Triton 3.6; no internet), one call:
#   make gpu-check OUT=$OUT          (or: bash scripts/gpu_check.sh $OUT)
# carrying the git-ignored folders the side-by-side sections read: third_party/1d-tokenizer (a checkout of
# github.com/bytedance/1d-tokenizer, for `tokenizer_reference`; never committed) and .whl (constriction, for
# `otok_cuda`); the built-in natural-image model (ar_model/pretrained/cifar10) travels with the tree.
#
# Missing packages. The GPU image has lightning, timm, einops, pyyaml and pytest, but not webdataset,
# vector-quantize-pytorch, jsonargparse or constriction. Only `otok_cuda` needs one of them, constriction (a section
# that needs an absent package skips itself with the reason in the JSON; the shapes tokenizer falls back from FSQ to
# our VQ). To bring them anyway, download wheels HERE into .whl/ (git-ignored) and carry `.whl` with the run:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl vector-quantize-pytorch einx frozendict webdataset braceexpand jsonargparse docstring-parser \
#       typeshed-client constriction
# (one version of each; `unzip -p .whl/NAME-*.whl '*/METADATA' | grep ^Requires-Dist` lists what each needs).
# Every .whl/*.whl is installed below into a temporary folder (no index, no deps) put first on PYTHONPATH.
set -uo pipefail

if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: $0 OUT [--dry-run] [--model DIR] [--deadline-s S] [--only SECTION,...]" >&2
    exit 2
fi
out=$1
shift
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}
deadline=450
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[$i]}" = "--deadline-s" ] && deadline=${args[$((i + 1))]%.*}
done
mkdir -p "$out" || exit 2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if compgen -G "$repo/.whl/*.whl" > /dev/null; then
    if "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" "$repo"/.whl/*.whl; then
        export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "gpu_check.sh: installing .whl/*.whl failed; going on without them" >&2
    fi
fi

# The driver stops itself at its deadline; this outer limit only catches a hang in the interpreter itself.
export PYTHONUNBUFFERED=1
timeout --kill-after=10 $((deadline + 30)) "$py" "$repo/scripts/gpu_check.py" --out "$out" "$@" 2>&1 \
    | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
