#!/usr/bin/env bash
# The prepared GPU check: one H100/H200, at most 8 minutes, from a checkout (no internet needed).
#
#   scripts/gpu_check.sh OUT [--dry-run] [--model DIR] [--natural-model DIR] [--reference DIR] [--deadline-s S]
#                        [--only SECTION,...]
#   make gpu-check OUT=DIR [DRY=1] [MODEL=DIR]
#
# Writes OUT/gpu_check.json, OUT/gpu_check.md, OUT/gpu_check.log and OUT/gpu_check_pytest.log (4 files, one
# folder: they all come back from the device machine's $OUT). The sections and their order are described in
# onetok/bench/gpu_check.py; --dry-run runs them all on CPU at toy sizes, skipping what needs CUDA.
#
# First the checkout is installed (a copy of its sources, `pip install --no-deps --no-build-isolation --no-index
# --target`, into a temporary folder put first on PYTHONPATH; needs pip, setuptools and wheel, which the GPU image
# has); the check then runs from that install, reading the checkout only for its tests/ and third_party/.
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
# Every .whl/*.whl is installed below into the same temporary folder (no index, no deps).
set -uo pipefail

if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: $0 OUT [--dry-run] [--model DIR] [--deadline-s S] [--only SECTION,...]" >&2
    exit 2
fi
out=$1
shift
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}
case "$py" in */*) py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")" ;; esac  # the check runs elsewhere
deadline=
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do  # folder arguments made absolute: the check runs in a scratch folder
    case "${args[$i]}" in
        --deadline-s) deadline=${args[$((i + 1))]%.*} ;;
        --model | --natural-model | --reference)
            [ $((i + 1)) -lt ${#args[@]} ] && [ "${args[$((i + 1))]#/}" = "${args[$((i + 1))]}" ] &&
                args[$((i + 1))]="$PWD/${args[$((i + 1))]}" ;;
    esac
done
mkdir -p "$out" || exit 2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

site="$work/site"
if compgen -G "$repo/.whl/*.whl" > /dev/null; then
    if ! "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$repo"/.whl/*.whl; then
        echo "gpu_check.sh: installing .whl/*.whl failed; going on without them" >&2
    fi
fi

# A copy of the sources (so that the build's own build/ and *.egg-info folders start empty, and none is left in the
# checkout), installed without dependencies, an index or build isolation: nothing is downloaded.
mkdir -p "$work/src" &&
    tar -C "$repo" --exclude=./.git --exclude=./.venv --exclude=./runs --exclude=./third_party --exclude=./.whl \
        --exclude=__pycache__ --exclude=./build --exclude='*.egg-info' -cf - . | tar -C "$work/src" -xf - || exit 2
if ! "$py" -m pip install -q --no-deps --no-build-isolation --no-index --no-compile --no-cache-dir \
        --target "$site" "$work/src" > "$work/install.log" 2>&1; then
    echo "gpu_check.sh: could not install the checkout with $py (pip, setuptools>=68 and wheel must be there; nothing" \
        "can be downloaded); pip said:" >&2
    tail -n 5 "$work/install.log" >&2
    exit 2
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "$deadline" ]; then  # the driver's default (onetok.bench.defaults)
    deadline=$(cd "$work" && "$py" -c 'from onetok.bench.defaults import GPU_CHECK_DEADLINE_S as s; print(int(s))') ||
        exit 2
fi

# The driver stops itself at its deadline; this outer limit only catches a hang in the interpreter itself. It runs in
# the scratch folder: the checkout's own onetok/ folder on sys.path would hide the installed package.
export PYTHONUNBUFFERED=1
out=$(cd "$out" && pwd)
(cd "$work" && timeout --kill-after=10 $((deadline + 30)) "$py" -m onetok.scripts.gpu_check --out "$out" \
    --checkout "$repo" "${args[@]}") 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
