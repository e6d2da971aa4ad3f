#!/usr/bin/env bash
# Packs the release binary, the libtorch libraries it needs and the default models into a folder that runs
# from any path without the venv: dist/ember-<version>-linux-x86_64-<variant>/{bin,lib,models} and a .tar.gz.
#
#   deploy/dist.sh cpu|cuda BINARY OUT_DIR
#
# The binary was linked against the PyTorch wheel in .venv with a RUNPATH into it; here it gets
# $ORIGIN/../lib instead, and every library it needs from the wheel (transitively, by DT_NEEDED) is copied into
# lib/ with its own RPATH set to $ORIGIN (the wheel's pointed at ../../nvidia/*/lib). Libraries found nowhere in
# the wheel must come from the system (glibc, libstdc++, libgcc_s: every Debian image has them); the script
# stops if one is missing there too.
#
# cpu:  what the binary links: libtorch_cpu + libc10 + libgomp and the two small CUDA runtime libraries
#       libtorch_cpu itself needs (libcudart, libcupti; they load without a GPU or a driver), and ONNX Runtime
#       (libonnxruntime.so.*, opened by ember when a model serves from model.onnx).
# cuda: adds libtorch_cuda, which ember opens with dlopen when a GPU is visible (src/engine/cuda.rs), and
#       everything it needs, plus the libraries libtorch and cuDNN open with dlopen themselves (not visible in
#       DT_NEEDED): cuDNN's engine/ops/cnn sub-libraries, NVRTC and libcaffe2_nvrtc. The driver (libcuda.so.1)
#       is not bundled: it belongs to the host and the NVIDIA container toolkit mounts it.
set -euo pipefail

variant=${1:?usage: deploy/dist.sh cpu|cuda BINARY OUT_DIR}
binary=${2:?binary}
out=${3:?out dir}
root=$(cd "$(dirname "$0")/.." && pwd)
site=$(echo "$root"/.venv/lib/python3*/site-packages)
[ -d "$site/torch/lib" ] || { echo "no torch wheel under $site (run make setup)" >&2; exit 1; }
command -v patchelf >/dev/null || { echo "patchelf is missing (make dist installs it)" >&2; exit 1; }
case $variant in cpu | cuda) ;; *) echo "variant must be cpu or cuda, not $variant" >&2; exit 1 ;; esac

# Where the wheel's libraries live, in the order its own RPATH searches them.
search=("$site/torch/lib")
for d in "$site"/nvidia/*/lib; do search+=("$d"); done
# Host libraries that are never bundled: the GPU driver (mounted into containers by the NVIDIA toolkit).
host_only=" libcuda.so.1 "

rm -rf "$out" "$out.tar.gz"
mkdir -p "$out/bin" "$out/lib" "$out/models"

cp "$binary" "$out/bin/ember"
# The health check (probe/): beside ember, linking only glibc and libgcc_s.
probe=$(dirname "$binary")/ember-probe
[ -x "$probe" ] || { echo "$probe is missing (make build builds it)" >&2; exit 1; }
cp "$probe" "$out/bin/ember-probe"
chmod 755 "$out/bin/ember" "$out/bin/ember-probe"
# The release profile keeps DWARF (130 MB of the 150); the symbol table stays, so backtraces still name functions.
strip --strip-debug "$out/bin/ember" "$out/bin/ember-probe"
patchelf --set-rpath '$ORIGIN/../lib' "$out/bin/ember"

needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
find_in_wheel() {
  local d
  for d in "${search[@]}"; do
    if [ -e "$d/$1" ]; then echo "$d/$1"; return; fi
  done
}

queue=($(needed "$out/bin/ember"))
if [ "$variant" = cuda ]; then
  # Opened with dlopen: libtorch_cuda by ember, NVRTC (jit kernels) by libtorch_cuda, and libcudnn.so.9's split
  # sub-libraries by cuDNN.
  queue+=(libtorch_cuda.so libcaffe2_nvrtc.so libnvrtc.so.13 libnvrtc-builtins.so.13.0)
  for f in "$site"/nvidia/cudnn/lib/libcudnn_*.so.9; do queue+=("$(basename "$f")"); done
fi
declare -A seen=()
system=()
system_libs=$(ldconfig -p)
while [ ${#queue[@]} -gt 0 ]; do
  name=${queue[0]}
  queue=("${queue[@]:1}")
  [ -z "${seen[$name]:-}" ] || continue
  seen[$name]=1
  path=$(find_in_wheel "$name")
  if [ -n "$path" ]; then
    cp "$path" "$out/lib/$name"
    chmod 755 "$out/lib/$name"
    # Every bundled library finds its siblings beside itself (DT_RPATH, as the wheel had, so it also covers
    # what they dlopen).
    patchelf --force-rpath --set-rpath '$ORIGIN' "$out/lib/$name"
    queue+=($(needed "$path"))
  elif [[ $host_only == *" $name "* ]]; then
    continue
  elif grep -q "^[[:space:]]*$name " <<<"$system_libs"; then
    system+=("$name")
  else
    echo "$name: needed but neither in the wheel nor on the system" >&2
    exit 1
  fi
done

# ONNX Runtime, from PyPI's onnxruntime wheel in the venv: ember opens it with dlopen when a model needs it
# (src/engine/onnx/runtime.rs looks beside libtorch, in lib/). It needs only system libraries (glibc, libstdc++).
onnxruntime=$(ls "$site"/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | sort | tail -n 1)
[ -n "$onnxruntime" ] || { echo "no onnxruntime wheel under $site (run make setup)" >&2; exit 1; }
cp "$onnxruntime" "$out/lib/"
chmod 755 "$out/lib/$(basename "$onnxruntime")"
for name in $(needed "$onnxruntime"); do
  grep -q "^[[:space:]]*$name " <<<"$system_libs" || { echo "$name (needed by ONNX Runtime) is not on the system" >&2; exit 1; }
  system+=("$name")
done

# The default models: every model folder (model.toml beside its versions), not models/export/ (the Python
# that builds them) nor anything the setup leaves around.
for toml in "$root"/models/*/model.toml; do
  model=$(dirname "$toml")
  cp -r "$model" "$out/models/"
done
find "$out/models" -name '__pycache__' -prune -exec rm -rf {} +

version=$("$out/bin/ember" --version | awk '{print $2}')
cat >"$out/README.txt" <<EOF
ember $version for Linux x86_64 ($variant)

  bin/ember     the server and the fine-tuning CLI (ember --help, ember serve --help)
  bin/ember-probe  asks a running ember whether it is ready, over HTTP or TLS: a health check (--help)
  lib/          the libtorch libraries it needs (found through its rpath, \$ORIGIN/../lib: no LD_LIBRARY_PATH),
                and ONNX Runtime (opened only when a model serves from model.onnx)
  models/       the default models (a model repository: one folder per model)

Run it from anywhere. The system libraries it needs are $(printf '%s\n' "${system[@]}" | sort -u | tr '\n' ' ')
(glibc, libstdc++, libgcc_s$( [[ " ${system[*]} " == *" libz.so.1 "* ]] && echo ", zlib"): any Debian 12 or newer, Ubuntu 22.04 or newer):

  ./bin/ember serve --model-repo ./models            # http://127.0.0.1:8080, ready when /health/ready is 200
  ./bin/ember serve --host 0.0.0.0 --port 8080       # every flag is also an EMBER_* variable
  curl -s -X POST --data-binary @photo.jpg -H 'Content-Type: image/jpeg' localhost:8080/v1/classify
  ./bin/ember train --model-repo ./models --model mobilenet_v2 --data ./my_photos --into my_classifier
EOF
if [ "$variant" = cuda ]; then
  cat >>"$out/README.txt" <<EOF

CUDA: the CUDA user-space libraries (cudart, cuBLAS, cuDNN, NCCL, ...) are in lib/; the host needs only the
NVIDIA driver (libcuda.so.1, driver 580 or newer for CUDA 13). ember serve --device auto uses the GPU when one
is visible and the CPU otherwise; ember info tells which.
EOF
fi

echo "bundled from the wheel: $(cd "$out/lib" && ls | tr '\n' ' ')"
echo "left to the system: $(printf '%s\n' "${system[@]}" | sort -u | tr '\n' ' ')"
