#!/usr/bin/env python3
"""Time per generated token, by kernel, from a kernel_trace.cpp trace of `turboquant bench`.

    summarize.py TRACE.tsv --tokens N [--command "..."] [--json OUT.json]

The trace is cut into runs, one per cache type (bench makes a new context for every type, f16
first): into pieces where the GPU idles for more than --gap-ms, then pieces that run the same
attention kernels are joined again. In each run the decode window is everything after the last
prompt-processing kernel (matrix-matrix products and the prefill attention kernels), so a bench
with `-p 0` at one depth leaves the two warm-ups and the timed generations: N = n_gen *
(repetitions + 2). Runs with fewer kernels than N in their window (model load, calibration) are
skipped. Prints, per run and kernel, the calls per token, the microseconds per token and per call
that the kernel adds to the stream (from the later of its start and its predecessor's end), and
its mean duration; then the totals, and the GPU's idle time per token (waiting for launches, and
for the host between tokens; the tracer itself adds some of it).
"""

import argparse
import gzip
import json
import sys
from collections import defaultdict

# kernels that only prompt processing runs (a batch of tokens), never one-token decode
PREFILL_MARKERS = ("mul_mat_q<", "mul_mat_f<", "gemm", "flash_attn_ext_f16", "flash_attn_tile", "cutlass")


def load(path):
    events = []
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                try:
                    start, end, grid, block, regs, name = line.rstrip("\n").split("\t", 5)
                    events.append((int(start), int(end), grid, block, int(regs), name))
                except ValueError:
                    sys.exit(f"{path}:{number}: not a line of kernel_trace.cpp's trace")
    except OSError as e:
        sys.exit(f"{path}: cannot read the trace: {e.strerror}")
    events.sort()
    return events


def short(name, width=110):
    # template arguments and parameter lists say which instance; keep them, but bounded
    return name if len(name) <= width else name[: width - 3] + "..."


def attention_kernels(events):
    return frozenset(e[5] for e in events if "flash_attn" in e[5] and "combine" not in e[5])


def summarize(window, tokens):
    # ggml-cuda launches a kernel before its predecessor ends (programmatic dependent launch), so
    # a kernel's duration includes waiting for the one before; what it adds to the stream is the
    # time from the later of its start and its predecessor's end
    per_kernel = defaultdict(lambda: [0, 0, 0, 0])  # name -> [calls, ns added, ns duration, ns idle before]
    prev_end = window[0][0]
    idle_ns = 0
    for start, end, _grid, _block, _regs, name in window:
        idle_ns += max(0, start - prev_end)
        per_kernel[name][3] += max(0, start - prev_end)
        per_kernel[name][0] += 1
        per_kernel[name][1] += max(0, end - max(start, prev_end))
        per_kernel[name][2] += end - start
        prev_end = max(prev_end, end)
    rows = sorted(per_kernel.items(), key=lambda kv: -kv[1][1])
    return {
        "kernels_us_per_token": sum(k[1] for k in per_kernel.values()) / tokens / 1e3,
        "idle_us_per_token": idle_ns / tokens / 1e3,
        "calls_per_token": sum(k[0] for k in per_kernel.values()) / tokens,
        "span_us_per_token": (window[-1][1] - window[0][0]) / tokens / 1e3,
        "kernels": [
            {"name": name, "calls_per_token": calls / tokens, "us_per_token": added / tokens / 1e3,
             "us_per_call": added / calls / 1e3, "duration_us_per_call": duration / calls / 1e3,
             "idle_before_us_per_token": idle / tokens / 1e3}
            for name, (calls, added, duration, idle) in rows
        ],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--tokens", type=int, required=True, help="generated tokens in each run's decode window")
    ap.add_argument("--gap-ms", type=float, default=5.0, help="GPU idle time that may separate runs")
    ap.add_argument("--command", help="the traced command, recorded in the JSON")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.tokens <= 0:
        ap.error("--tokens must be at least 1")

    events = load(args.trace)
    if not events:
        sys.exit(f"{args.trace}: no kernels recorded")
    pieces = [[events[0]]]
    for e in events[1:]:
        if e[0] - pieces[-1][-1][1] > args.gap_ms * 1e6:
            pieces.append([])
        pieces[-1].append(e)
    runs = []
    last_label = None
    for piece in pieces:
        label = attention_kernels(piece)
        if runs and label == last_label:
            runs[-1].extend(piece)
        else:
            runs.append(piece)
        last_label = label

    results = []
    for run in runs:
        last_prefill = max((e[1] for e in run if any(m in e[5] for m in PREFILL_MARKERS)), default=0)
        window = [e for e in run if e[0] > last_prefill]
        if len(window) < args.tokens:
            continue
        result = summarize(window, args.tokens)
        results.append(result)
        print(f"run {len(results)}: {len(window)} kernels in the decode window, {args.tokens} tokens")
        print(f"{'us/token':>9} {'calls/token':>11} {'us/call':>8} {'duration':>8} {'idle/tok':>8}  kernel")
        for k in result["kernels"]:
            print(f"{k['us_per_token']:9.1f} {k['calls_per_token']:11.2f} {k['us_per_call']:8.2f} "
                  f"{k['duration_us_per_call']:8.2f} {k['idle_before_us_per_token']:8.1f}  {short(k['name'])}")
        print(f"{result['kernels_us_per_token']:9.1f} {result['calls_per_token']:11.2f} {'':26}  all kernels")
        print(f"{result['idle_us_per_token']:9.1f} {'':11} {'':26}  GPU idle")
        print(f"{result['span_us_per_token']:9.1f} {'':11} {'':26}  span of the window")
        print()
    if not results:
        sys.exit(f"{args.trace}: no run has {args.tokens} kernels after its last prompt-processing kernel")

    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"command": args.command, "trace": args.trace, "tokens": args.tokens, "runs": results}, f, indent=1)


if __name__ == "__main__":
    main()
