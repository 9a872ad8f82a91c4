#!/usr/bin/env bash
# The CUDA checks, run on a GPU machine from the repository root over a bundle made by
# scripts/gpu-bundle.sh (default .gpu): every backend operation on CUDA against the CPU
# references, the backend runner on CUDA against the CPU runner, the public goldens on
# --device cuda, a generate side by side with the CPU, and (GPU_CHECK_PERF=1, the default) decode
# tokens/s at batch 1, 16 and 64 of a Llama-2-7B shape with random bf16 weights, Kvasir
# (`bench engine --device cuda`) against PyTorch + transformers (bench/torch_decode_baseline.py,
# static cache, SDPA), and the decode attention's bandwidth (kvasir_attention_bench); first, on the
# host CPU where it has AVX-512, the native avx512 level (below). Results go to stdout (and to $OUT
# when set).
set -uo pipefail
if [[ -n ${OUT:-} ]]; then exec > >(tee "$OUT/gpu-check.log") 2>&1; fi
bundle=${1:-.gpu}
root=$(pwd)
export LD_LIBRARY_PATH="$root/$bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export KVASIR_SHARED_DIR="$root/$bundle/shared"  # the tests' fixtures (tests/testing/paths.h)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
model="$bundle/shared/models/stories260K.gguf"
status=0
run() {
  echo "== $*"
  "$@" || status=1
}
# The host CPU (GPU_CHECK_CPU=1, the default): where it has AVX-512 VNNI, the native avx512 level
# of the CPU kernels, which is off by default until its tests pass on such hardware (docs/
# kernels.md, "ISA dispatch"): its kernel tests, then `bench engine` at the avx2 and avx512 levels
# on a model of the default model's shape and types (random Q4_1 weights, 2 threads as in
# docs/performance.md, then all cores).
if [[ ${GPU_CHECK_CPU:-1} == 1 ]]; then
  lscpu | grep -E 'Model name|^CPU\(s\)|L2|L3|Flags' | cut -c1-400
  if grep -q avx512_vnni /proc/cpuinfo; then
    run "$bundle/bin/kvasir_kernels_tests" --gtest_filter='*avx512*:*Rows8*' --gtest_brief=1
    smol=/tmp/smollm2-shape-random-q4_1.gguf
    [[ -f $smol ]] || python3 scripts/make-random-llama-gguf.py \
      --config tests/testing/fixtures/smollm2-135m/config.json --tokenizer-from "$model" \
      --type q4_1 --out "$smol" > /dev/null 2>&1
    for threads in 2 0; do
      for isa in avx2 avx512; do
        run env KVASIR_ISA=$isa timeout 120 "$bundle/bin/kvasir" bench engine --model "$smol" \
          --threads $threads --batches 1,16 --prefill-tokens 256 --repeats 2 --quiet --json
      done
    done
  else
    echo "host CPU without AVX-512 VNNI: no native avx512 check"
  fi
fi
run "$bundle/bin/kvasir_kernels_tests" --gtest_filter='*cuda*:*Backend*' --gtest_brief=1
run "$bundle/bin/kvasir_worker_tests" --gtest_filter='*BackendRunner*:*Golden*' --gtest_brief=1
if command -v compute-sanitizer > /dev/null; then
  run compute-sanitizer --tool memcheck --error-exitcode 3 "$bundle/bin/kvasir_kernels_tests" \
    --gtest_filter='*cuda*' --gtest_brief=1
fi
run "$bundle/bin/kvasir" bench engine --device cuda --model "$model" --quiet
for device in cpu cuda; do
  run "$bundle/bin/kvasir" generate --device "$device" --model "$model" --prompt "Once upon a time" \
    --max-tokens 48 --temperature 0
done
if [[ ${GPU_CHECK_PERF:-1} == 1 ]]; then
  # Decode attention bandwidth (Llama-2-7B layer, 16 sequences, f16) at 4k and 32k of context, for
  # full (ratio 1) and what 2x, 4x, 8x policies hold, against the H200's 4.8 TB/s.
  run timeout 120 "$bundle/bin/kvasir_attention_bench" --device cuda --contexts 4096,32768 \
    --ratios 1,2,4,8 --peak-gbps 4800
  big=/tmp/llama2-7b-random-bf16.gguf
  shape=tests/testing/fixtures/llama2-7b/config.json
  [[ -f $big ]] || python3 scripts/make-random-llama-gguf.py --config "$shape" \
    --tokenizer-from "$model" --type bf16 --out "$big"
  run timeout 300 "$bundle/bin/kvasir" bench engine --device cuda --model "$big" --batches 1,16,64 \
    --kv-dtype f16 --kv-cache-memory 24GiB --repeats 2 --json
  run timeout 300 python3 bench/torch_decode_baseline.py --config "$shape" --batches 1,16,64 \
    --prompt 128 --tokens 128 --repeats 2
fi
exit $status
