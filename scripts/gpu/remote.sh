#!/usr/bin/env bash
# On the GPU machine, beside the files `pack` made (.gpu/ in the carried working tree): builds
# llama.cpp with CUDA from the packed tree (once per machine, in /tmp/tq), then runs
# `turboquant` against it.
#
#   remote.sh build              only build (start it in the background while models arrive:
#                                setsid nohup bash .gpu/remote.sh build > /tmp/tq-build.out 2>&1 &)
#   remote.sh models DIR...      join model pieces (from ../shared/tools/device-chunks) found in
#                                DIRs into the model cache, so the aliases resolve offline
#   remote.sh suite NAME         run a named suite, JSON and logs under $OUT (or /tmp/tq/out):
#                                  correctness   backend-check, perplexity of both models, all on
#                                                the GPU and with attention on the CPU (-ngl 0)
#                                  long          perplexity by position at contexts of 8K-32K
#                                                (Gemma-3) and 4K-8K (SmolLM2), q4_0 and turbo
#                                  needle-long   needle with 10 passphrases per depth at 4K-8K
#                                                (SmolLM2) and 8K-32K (Gemma-3)
#                                  fidelity-long attention-score fidelity at 2K-8K (SmolLM2) and
#                                                8K-32K (Gemma-3)
#                                  seeds         perplexity over 5 seeds of the turbo signs, at
#                                                512 and at 8K (SmolLM2) / 32K (Gemma-3)
#                                  bench-small   bench of both models at depths 0, 8192, 32768
#                                  bench-8b      bench of the llama-8b shape (below)
#   remote.sh llama-8b           write a random-weight llama-8b shape to $W/llama-8b.gguf if it is
#                                not there (tokenizer: tokenizer.gguf from pack --tokenizer, else
#                                the smollm2-135m model)
#   remote.sh trace NAME TOKENS ARGS...
#                                run turboquant ARGS... under the kernel tracer (trace/): time per
#                                generated token, by kernel, in $OUT/trace-NAME.{txt,json}; TOKENS
#                                is how many tokens the run generates after its last prompt batch
#   remote.sh trace-prompt NAME ARGS...
#                                the same for a prompt batch: ARGS a bench with -n 0 and
#                                --kv-quant f16,TYPE; kernel time of the last batch, f16 against
#                                TYPE, in $OUT/trace-NAME.txt (trace/prompt_batch.py)
#   remote.sh ARGS...            build if needed, then run turboquant ARGS...
set -euo pipefail
W=${TQ_WORK:-/tmp/tq}
mkdir -p "$W"
here=$(cd "$(dirname "$0")" && pwd)
export TURBOQUANT_CACHE=$W/cache
out=${OUT:-$W/out}
mkdir -p "$out"
# the cache types every speed and quality table compares
TYPES=f16,q8_0,q4_0,turbo4,turbo3,turbo2

build() {
  if [ -f "$W/build/bin/libggml-cuda.so" ]; then return; fi
  if [ -f "$W/build.started" ]; then # another call is building: wait for it
    while [ ! -f "$W/build.done" ]; do sleep 5; done
    [ -f "$W/build/bin/libggml-cuda.so" ] || { tail -50 "$W/build.log"; exit 1; }
    return
  fi
  touch "$W/build.started"
  [ -d "$W/llama.cpp" ] || tar xzf "$here/tree.tgz" -C "$W"
  export PATH=/usr/local/cuda/bin:$PATH
  local status=0
  {
    cmake -S "$W/llama.cpp" -B "$W/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_SHARED_LIBS=ON -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=ON \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF \
      -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF &&
    cmake --build "$W/build" -j "$(nproc)"
  } > "$W/build.log" 2>&1 || status=$?
  touch "$W/build.done"
  if [ $status -ne 0 ]; then grep -m20 -B2 -A8 "error" "$W/build.log" || tail -50 "$W/build.log"; exit 1; fi
}

# runs turboquant ARGS... under the kernel tracer, the trace in $W/trace-NAME.tsv
run_traced() {
  local name=$1
  shift
  build
  build_tracer
  # no stale trace of an earlier run of the same name may be summarized
  rm -f "$W/trace-$name.tsv"
  local status=0
  CUDA_INJECTION64_PATH="$W/libkernel_trace.so" KERNEL_TRACE_OUT="$W/trace-$name.tsv" tq "$@" \
    > "$W/trace-$name.log" 2>&1 || status=$?
  tail -20 "$W/trace-$name.log" > "$out/trace-$name-run.txt"
  if [ $status -ne 0 ]; then
    cat "$out/trace-$name-run.txt" >&2
    echo "trace: turboquant $* exited with $status" >&2
    exit 1
  fi
}

# the random llama-8b shape in $W/llama-8b.gguf, made once per machine; its tokenizer from
# tokenizer.gguf (pack --tokenizer), else from the smollm2-135m model
llama_8b() {
  if [ -f "$W/llama-8b.gguf" ]; then return; fi
  local donor=smollm2-135m
  [ -f "$here/tokenizer.gguf" ] && donor=$here/tokenizer.gguf
  tq synth --shape llama-8b --tokenizer-from "$donor" -o "$W/llama-8b.gguf"
}

tq() {
  LD_LIBRARY_PATH="$W/build/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$here/turboquant" "$@"
}

# the kernel tracer (trace/kernel_trace.cpp) against the toolkit's CUPTI
build_tracer() {
  if [ -f "$W/libkernel_trace.so" ]; then return; fi
  local cupti=/usr/local/cuda/extras/CUPTI
  [ -f "$cupti/include/cupti.h" ] || cupti=/usr/local/cuda
  [ -f "$cupti/include/cupti.h" ] || { echo "no CUPTI headers in the CUDA toolkit" >&2; exit 1; }
  local lib=$cupti/lib64
  [ -d "$lib" ] || lib=/usr/local/cuda/lib64
  # the newest kernel record the headers define
  local record
  record=$(grep -ho 'CUpti_ActivityKernel[0-9]\+' "$cupti/include/cupti_activity.h" | sort -V | tail -1)
  g++ -shared -fPIC -O2 -std=c++17 -DKERNEL_RECORD="$record" -I"$cupti/include" -I/usr/local/cuda/include \
    "$here/trace/kernel_trace.cpp" -L"$lib" -lcupti -Wl,-rpath,"$lib" -o "$W/libkernel_trace.so"
}

case "${1:-}" in
  build)
    build
    echo "built: $(ls "$W/build/bin"/*.so | tr '\n' ' ')"
    ;;
  llama-8b)
    build
    llama_8b
    ls -l "$W/llama-8b.gguf"
    ;;
  models)
    shift
    mkdir -p "$W/pieces" "$TURBOQUANT_CACHE/models"
    for dir in "$@"; do cp "$dir"/* "$W/pieces/"; done
    for name in smollm2-135m gemma3-270m; do
      if ls "$W/pieces/$name.gguf.part."* > /dev/null 2>&1; then
        cat "$W/pieces/$name.gguf.part."* > "$TURBOQUANT_CACHE/models/$name.gguf"
        ls -l "$TURBOQUANT_CACHE/models/$name.gguf"
      fi
    done
    ;;
  suite)
    build
    case "${2:-}" in
      correctness)
        tq backend-check --json "$out/backend-check.json" 2>&1 | tee "$out/backend-check.txt" || echo "(failed: $?)"
        for m in smollm2-135m gemma3-270m; do
          tq perplexity -m "$m" -f "$here/wikitext-2-test.txt" --chunks 40 -ngl 99 \
            --kv-quant "$TYPES" --json "$out/perplexity-$m-cuda.json" 2>&1 | tee "$out/perplexity-$m-cuda.txt" || echo "(failed: $?)"
          # the control: -ngl 0 keeps the cache, attention and the element-wise operations on the
          # CPU while the big matrix products still go to the GPU (llama.cpp offloads them for
          # batches of 32 or more), so the two runs share the products, which round differently
          # on the GPU, and differ in the cache and attention kernels
          tq perplexity -m "$m" -f "$here/wikitext-2-test.txt" --chunks 40 -ngl 0 \
            --kv-quant "$TYPES" --json "$out/perplexity-$m-cuda-attention-on-cpu.json" 2>&1 |
            tee "$out/perplexity-$m-cuda-attention-on-cpu.txt" || echo "(failed: $?)"
          python3 "$here/kld_match.py" "$out/perplexity-$m-cuda.json" \
            "$out/perplexity-$m-cuda-attention-on-cpu.json" 2>&1 | tee "$out/kld-match-$m.txt" || echo "(failed: $?)"
        done
        ;;
      long)
        # KLD by position at long contexts (model, context, chunks): 65536 tokens at 8K and 16K and
        # one chunk at 32K on Gemma-3, 32768 tokens on SmolLM2 (trained on 8192); about 5 minutes
        # on the H100 once built
        for run in "gemma3-270m 8192 8" "gemma3-270m 16384 4" "gemma3-270m 32768 1" \
                   "smollm2-135m 4096 8" "smollm2-135m 8192 4"; do
          set -- $run
          tq perplexity -m "$1" -f "$here/wikitext-2-test.txt" -c "$2" --chunks "$3" -ngl 99 \
            --kv-quant f16,q4_0,turbo4,turbo3 --json "$out/perplexity-$1-c$2-cuda.json" 2>&1 |
            tee "$out/perplexity-$1-c$2-cuda.txt" || echo "(failed: $?)"
        done
        ;;
      needle-long)
        # 10 needles at each of 3 depths: 30 trials per context and cache type
        for run in "smollm2-135m 4096,8192" "gemma3-270m 8192,16384,32768"; do
          set -- $run
          tq needle -m "$1" --contexts "$2" --depths 0.1,0.5,0.9 --trials 10 -ngl 99 \
            --kv-quant f16,q4_0,turbo4,turbo3 --json "$out/needle-$1-long-cuda.json" 2>&1 |
            tee "$out/needle-$1-long-cuda.txt" || echo "(failed: $?)"
        done
        ;;
      fidelity-long)
        # the capture pass on the GPU, the scores on the CPU
        for run in "smollm2-135m 2048,4096,8192" "gemma3-270m 8192,16384,32768"; do
          set -- $run
          mkdir -p "$out/fidelity-$1"
          tq fidelity -m "$1" --contexts "$2" --bits 2,3,4 -ngl 99 \
            --methods "${FIDELITY_METHODS:-mse,prod,turbo,q4_0,q8_0}" --json-dir "$out/fidelity-$1" 2>&1 |
            tee "$out/fidelity-$1/$1.txt" || echo "(failed: $?)"
        done
        ;;
      seeds)
        # five seeds of the turbo types' random signs; f16 and q4_0 run once
        for run in "smollm2-135m 512 40" "gemma3-270m 512 40" "smollm2-135m 8192 2" "gemma3-270m 32768 1"; do
          set -- $run
          tq perplexity -m "$1" -f "$here/wikitext-2-test.txt" -c "$2" --chunks "$3" -ngl 99 \
            --kv-quant f16,q4_0,turbo4,turbo3,turbo2 --turbo-seeds 0,1,2,3,4 \
            --json "$out/perplexity-$1-c$2-seeds-cuda.json" 2>&1 |
            tee "$out/perplexity-$1-c$2-seeds-cuda.txt" || echo "(failed: $?)"
        done
        ;;
      bench-small)
        for m in smollm2-135m gemma3-270m; do
          tq bench -m "$m" -p 512 -n 128 -d 0,8192,32768 -r 3 --kv-quant "$TYPES" \
            --json "$out/bench-$m-cuda.json" 2>&1 | tee "$out/bench-$m-cuda.txt" || echo "(failed: $?)"
        done
        ;;
      bench-8b)
        llama_8b
        tq bench -m "$W/llama-8b.gguf" -p 512 -n 64 -d 0,32768 -r 3 --kv-quant "$TYPES" \
          --json "$out/bench-llama-8b-cuda.json" 2>&1 | tee "$out/bench-llama-8b-cuda.txt" || echo "(failed: $?)"
        ;;
      *)
        echo "unknown suite '${2:-}': correctness, long, needle-long, fidelity-long, seeds, bench-small or bench-8b" >&2
        exit 2
        ;;
    esac
    ;;
  trace)
    if [ $# -lt 4 ]; then
      echo "usage: remote.sh trace NAME TOKENS ARGS... (ARGS: a turboquant command, e.g. bench ...)" >&2
      exit 2
    fi
    name=$2
    tokens=$3
    shift 3
    run_traced "$name" "$@"
    python3 "$here/trace/summarize.py" "$W/trace-$name.tsv" --tokens "$tokens" \
      --command "remote.sh trace $name $tokens $*" --json "$out/trace-$name.json" | tee "$out/trace-$name.txt"
    ;;
  trace-prompt)
    if [ $# -lt 3 ]; then
      echo "usage: remote.sh trace-prompt NAME ARGS... (ARGS: bench ... -n 0 --kv-quant f16,TYPE)" >&2
      exit 2
    fi
    name=$2
    shift 2
    run_traced "$name" "$@"
    { echo "remote.sh trace-prompt $name $*"; python3 "$here/trace/prompt_batch.py" "$W/trace-$name.tsv"; } |
      tee "$out/trace-$name.txt"
    ;;
  *)
    build
    tq "$@"
    ;;
esac
