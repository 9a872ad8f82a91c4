#!/usr/bin/env bash
# Packs what the CUDA checks need onto a GPU machine that has the CUDA toolkit but none of this
# project's Debian libraries: the kvasir binary, the attention benchmark and the kernel and worker
# test binaries of a CUDA build, the shared libraries they load (except the C/C++ runtime and
# CUDA's own, which the GPU machine has), stories260K and its goldens, and scripts/gpu-check.sh
# to run there.
#
#   scripts/gpu-bundle.sh [BUILD_DIR] [OUT_DIR]    # defaults: build .gpu
#
# .gpu is ignored by git (.gitignore), so it travels to a GPU machine only when named in carry.
# On the GPU machine, from the repository root: bash .gpu/gpu-check.sh
set -euo pipefail
build=${1:-build}
out=${2:-.gpu}
shared=${KVASIR_SHARED:-../shared}
bins=("$build/bin/kvasir" "$build/bin/kvasir_attention_bench" "$build/tests/kvasir_kernels_tests"
  "$build/tests/kvasir_worker_tests")
for b in "${bins[@]}"; do
  [[ -x $b ]] || { echo "gpu-bundle: $b is missing: build first (make build)" >&2; exit 1; }
done
if ! ldd "$build/bin/kvasir" | grep -q libcudart; then
  echo "gpu-bundle: $build/bin/kvasir has no CUDA backend (configure where nvcc is found)" >&2
  exit 1
fi
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/shared/models" "$out/shared/golden"
cp "${bins[@]}" "$out/bin/"
for b in "${bins[@]}"; do ldd "$b"; done | awk '$3 ~ /^\// {print $3}' | sort -u |
  while read -r lib; do
    case "$(basename "$lib")" in
      libc.so* | libm.so* | libpthread* | libdl.so* | librt.so* | libstdc++* | libgcc_s* | \
        ld-linux* | libcuda* | libcublas* | libcudart* | libnccl*) ;;
      *) cp -L "$lib" "$out/lib/" ;;
    esac
  done
cp "$shared/models/stories260K.gguf" "$out/shared/models/"
cp "$shared/golden/stories260K_public.jsonl" "$out/shared/golden/"
cp scripts/gpu-check.sh "$out/"
du -sh "$out"
