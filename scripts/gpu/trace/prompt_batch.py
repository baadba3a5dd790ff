#!/usr/bin/env python3
"""Kernel time of the last prompt batch, by kernel, from a kernel_trace.cpp trace of
`turboquant bench -p N -n 0 -d DEPTH -r 1 --kv-quant f16,TYPE` (TYPE a turbo type).

    prompt_batch.py TRACE.tsv[.gz] [--gap-ms 1]

bench runs f16 first; the turbo run starts at the first kernel with "turbo" in its name. In each
run the layers are counted as the prefill attention calls of the last batch (the kernels after
the last time the GPU idled for more than --gap-ms, the host's work between two batches), and the
last batch is taken as the kernels between the run's last LAYERS + 1 attention calls: one layer's
work each (its attention, then the next layer's norms, products and cache writes), so both runs
are compared over the same layers at the largest depth. Prints each run's kernel time (the sum of
the kernels' durations; the host's gaps are left out) and its largest kernels.
"""

import argparse
import sys
from collections import defaultdict

from summarize import load, short

ATTENTION = "flash_attn_ext_f16"  # the tensor-core kernel that prefill runs for every cache type


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--gap-ms", type=float, default=1.0, help="GPU idle time that separates two batches")
    ap.add_argument("--top", type=int, default=8, help="kernels listed per run")
    args = ap.parse_args()
    if args.gap_ms <= 0:
        ap.error("--gap-ms must be above 0")

    events = load(args.trace)
    first_turbo = next((i for i, e in enumerate(events) if "turbo" in e[5]), None)
    if first_turbo is None:
        sys.exit(f"{args.trace}: no turbo kernel, so no turbo run to compare")
    totals = {}
    for label, run in (("f16", events[:first_turbo]), ("turbo", events[first_turbo:])):
        calls = [i for i, e in enumerate(run) if ATTENTION in e[5]]
        if not calls:
            sys.exit(f"{args.trace}: the {label} run has no prefill attention call")
        batch_start, prev_end = 0, run[0][1]
        for i in range(1, calls[-1] + 1):
            if run[i][0] - prev_end > args.gap_ms * 1e6:
                batch_start = i
            prev_end = max(prev_end, run[i][1])
        layers = sum(1 for i in calls if i >= batch_start)
        if len(calls) < layers + 1:
            sys.exit(f"{args.trace}: the {label} run has a single batch; bench -d fills the cache in batches before it")
        window = run[calls[-layers - 1] + 1:calls[-1] + 1]
        per_kernel = defaultdict(lambda: [0, 0])  # name -> [calls, ns]
        for start, end, _grid, _block, _regs, name in window:
            per_kernel[name][0] += 1
            per_kernel[name][1] += end - start
        totals[label] = sum(ns for _, ns in per_kernel.values())
        print(f"{label}: {totals[label] / 1e6:.2f} ms of kernels over {layers} layers")
        for name, (n, ns) in sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:args.top]:
            print(f"  {ns / 1e3:9.1f} us = {n:4d} x {ns / n / 1e3:7.2f} us  {short(name, 90)}")
    print(f"f16 over turbo: {totals['f16'] / totals['turbo']:.3f}")


if __name__ == "__main__":
    main()
