#!/usr/bin/env bash
# Experiment (on the GPU machine, from .gpu/experiments/): what f16 generates on the llama-8b shape
# with the pinned llama.cpp's tensor-core (MMA) flash-attention kernel in place of the vector kernel
# that its choice (ggml_cuda_get_best_fattn_kernel in fattn.cu) gives f16 at batch 1 with 4 query
# heads per KV head. Before the build, an environment switch is added to that choice:
# TQ_F16_DECODE_MMA set, the vector kernel is not chosen for unquantized K and V; unset, the choice
# is upstream's. The same bench then runs without and with it, in one build.
#
# Needs a fresh machine (it builds its own copy of the tree) and what `remote.sh llama-8b` needs: the
# tokenizer from `scripts/gpu/pack --tokenizer`, or the smollm2-135m model (remote.sh models).
set -euo pipefail
W=${TQ_WORK:-/tmp/tq}
gpu=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$W/out}
mkdir -p "$W" "$out"
if [ -f "$W/build/bin/libggml-cuda.so" ] && ! grep -q TQ_F16_DECODE_MMA "$W/llama.cpp/ggml/src/ggml-cuda/fattn.cu"; then
  echo "f16-decode-kernel: $W/build is a build without the switch; run this on a fresh machine or another TQ_WORK" >&2
  exit 1
fi
[ -d "$W/llama.cpp" ] || tar xzf "$gpu/tree.tgz" -C "$W"
f=$W/llama.cpp/ggml/src/ggml-cuda/fattn.cu
if ! grep -q TQ_F16_DECODE_MMA "$f"; then
  sed -i 's/const bool sparse_decode = gqa_opt_applies/const bool sparse_decode = getenv("TQ_F16_DECODE_MMA") == nullptr \&\& gqa_opt_applies/' "$f"
  sed -i 's/if (!sparse_decode && cc >= GGML_CUDA_CC_ADA_LOVELACE/if (!sparse_decode \&\& getenv("TQ_F16_DECODE_MMA") == nullptr \&\& cc >= GGML_CUDA_CC_ADA_LOVELACE/' "$f"
  sed -i '1i #include <cstdlib>' "$f"
fi
# both lines of the choice must carry the switch, or the run would measure upstream's choice twice
[ "$(grep -c TQ_F16_DECODE_MMA "$f")" -eq 2 ] || { echo "f16-decode-kernel: fattn.cu's choice changed; switch not added" >&2; exit 1; }
grep -n TQ_F16_DECODE_MMA "$f" | tee "$out/f16-decode-kernel-switch.txt"
export TQ_WORK=$W
bash "$gpu/remote.sh" llama-8b
args=(bench -m "$W/llama-8b.gguf" -p 0 -n 64 -d 0,32768 -r 3 --kv-quant f16,turbo4,turbo3,turbo2)
bash "$gpu/remote.sh" "${args[@]}" --json "$out/f16-decode-kernel-vec.json" 2>&1 | tee "$out/f16-decode-kernel-vec.txt"
TQ_F16_DECODE_MMA=1 bash "$gpu/remote.sh" "${args[@]}" --json "$out/f16-decode-kernel-mma.json" 2>&1 |
  tee "$out/f16-decode-kernel-mma.txt"
