#!/usr/bin/env bash
# On the GPU machine, beside the files `pack` made (.gpu/, or a copy of it in /tmp): builds
# llama.cpp with CUDA from the packed tree (once per machine, in /tmp/tq), then runs
# `turboquant ARGS...` against it.
#   remote.sh build            only build (run it in the background while models arrive)
#   remote.sh ARGS...          build if needed, then run turboquant ARGS...
set -euo pipefail
W=${TQ_WORK:-/tmp/tq}
mkdir -p "$W"
here=$(cd "$(dirname "$0")" && pwd)
if [ ! -f "$W/build/bin/libggml-cuda.so" ]; then
  if [ ! -d "$W/llama.cpp" ]; then
    tar xzf "$here/tree.tgz" -C "$W"
  fi
  export PATH=/usr/local/cuda/bin:$PATH
  cmake -S "$W/llama.cpp" -B "$W/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF > "$W/configure.log"
  cmake --build "$W/build" -j "$(nproc)" > "$W/build.log" 2>&1 || { tail -50 "$W/build.log"; exit 1; }
fi
if [ "${1:-}" = "build" ]; then
  echo "built: $(ls "$W/build/bin"/*.so | tr '\n' ' ')"
  exit 0
fi
export LD_LIBRARY_PATH="$W/build/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/turboquant" "$@"
