#!/bin/bash
# On an Intel Xeon with AMX, from the bundle scripts/amx-host/pack made: the build without patch
# 0009 on a 3000-character prompt (it crashes), the patched one on the same prompt, SmolLM2 and
# Gemma-3 through the AMX weights against plain ones (perplexity --check-repack), the repack test,
# pp512/tg32 with and without AMX, and the README's main job. Logs and JSON go to $OUT.
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=$PWD/lib TURBOQUANT_CACHE=$PWD/cache TURBOQUANT_TEXT=$PWD/wikitext-2-test.txt
# the test binary finds the command here, not where cargo built it
export CARGO_BIN_EXE_turboquant=$PWD/turboquant
{
echo "== cpu"; grep -m1 "model name" /proc/cpuinfo; nproc; grep -o -w 'amx[a-z0-9_]*\|avx512_vnni\|avx512f' /proc/cpuinfo | sort | uniq -c
echo "== unpatched (GCC 12, -march=sapphirerapids): 3000-character prompt"
./turboquant-unpatched run -m smollm2-135m -p "$(head -c 3000 wikitext-2-test.txt)" -n 4 --kv-quant f16 --temp 0 > /dev/null 2> unpatched.err; echo "exit status $?"; tail -3 unpatched.err
echo "== patched: the same"
./turboquant run -m smollm2-135m -p "$(head -c 3000 wikitext-2-test.txt)" -n 4 --kv-quant f16 --temp 0 --json $OUT/run-patched.json > /dev/null; echo "exit status $?"
} 2>&1 | tee $OUT/amx-host.txt
for m in smollm2-135m gemma3-270m; do
  timeout 200 ./turboquant perplexity -m $m -f wikitext-2-test.txt --chunks 20 --kv-quant f16,turbo3 --check-repack --json $OUT/check-repack-$m.json 2>&1 | tail -8 | tee -a $OUT/amx-host.txt
done
echo "== the repack test" | tee -a $OUT/amx-host.txt
timeout 300 ./repack-test 2>&1 | tee -a $OUT/amx-host.txt
echo "== pp512 speed, AMX against plain weights" | tee -a $OUT/amx-host.txt
for m in smollm2-135m gemma3-270m; do
  timeout 120 ./turboquant bench -m $m -p 512 -n 32 -r 3 --kv-quant f16 --json $OUT/bench-amx-$m.json 2>&1 | tail -6 | tee -a $OUT/amx-host.txt
  timeout 120 ./turboquant bench -m $m -p 512 -n 32 -r 3 --kv-quant f16 --no-repack --json $OUT/bench-plain-$m.json 2>&1 | tail -6 | tee -a $OUT/amx-host.txt
done
echo "== the main job (README)" | tee -a $OUT/amx-host.txt
timeout 240 ./turboquant perplexity -m smollm2-135m -f wikitext-2-test.txt --chunks 40 --kv-quant f16,q8_0,q4_0,turbo4,turbo3,turbo2 --json $OUT/main-job-amx.json 2>&1 | tail -12 | tee -a $OUT/amx-host.txt
echo "exit status ${PIPESTATUS[0]}" | tee -a $OUT/amx-host.txt
