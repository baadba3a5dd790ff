#!/usr/bin/env python3
"""Compares the KLD of each cache type in two `turboquant perplexity --json` reports of one model
and text, and fails when a turbo type's KLD differs by more than the tolerance.

    kld_match.py GPU.json CONTROL.json [--tolerance 0.02]

The suite's pair is the model all on the GPU (-ngl 99) against -ngl 0, where the cache and the
attention stay on the CPU but llama.cpp still sends the big matrix products to the GPU: the same
products, so the two differ in the attention kernels (and the small element-wise operations), not
in the products, whose GPU rounding moves every cache type's KLD on some models (SmolLM2).
Upstream's types are listed for comparison and not judged.
"""

import argparse
import json
import os
import sys


# what the comparison reads of a report
KEYS = ("model", "text_file", "ctx_size", "tokens_scored_per_type", "chunks", "rows")


def load_report(path):
    """The report and each cache type's mean KLD; exits with a message on a file that is not one."""
    try:
        with open(path) as f:
            report = json.load(f)
        missing = [key for key in KEYS if key not in report]
        if missing:
            sys.exit(f"kld_match: {path}: not a perplexity report (no {', '.join(missing)})")
        return report, {row["cache"]: row["kld"]["mean"] for row in report["rows"]}
    except (OSError, ValueError) as e:
        sys.exit(f"kld_match: {path}: {e}")
    except (KeyError, TypeError) as e:
        sys.exit(f"kld_match: {path}: a row without {e} is not a perplexity report's")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gpu", help="perplexity JSON of the run to check")
    ap.add_argument("control", help="perplexity JSON of the run it must match")
    ap.add_argument("--tolerance", type=float, default=0.02, help="largest relative KLD difference")
    args = ap.parse_args()
    if not args.tolerance >= 0:
        ap.error("--tolerance must be 0 or more")

    gpu, gpu_kld = load_report(args.gpu)
    control, control_kld = load_report(args.control)
    # the text may sit in another folder on each machine: its name and the tokens scored must match
    for key, same in (("model", str), ("text_file", os.path.basename), ("ctx_size", int),
                      ("tokens_scored_per_type", int)):
        if same(gpu[key]) != same(control[key]):
            sys.exit(f"kld_match: the reports differ in {key}: {gpu[key]!r} against {control[key]!r}")
    shared = [cache for cache in gpu_kld if cache in control_kld and cache != "f16"]
    if not any("turbo" in cache for cache in shared):
        sys.exit("kld_match: the reports share no turbo cache type")

    print(f"{gpu['model']}, {gpu['chunks']} chunks: KLD against each run's own f16")
    print(f"{'cache':<14} {'run':>8} {'control':>8} {'ratio':>7}")
    failed = []
    for cache in shared:
        a = gpu_kld[cache]
        b = control_kld[cache]
        ratio = a / b if b > 0 else float("inf")
        judged = "turbo" in cache
        ok = abs(ratio - 1) <= args.tolerance
        mark = ("ok" if ok else "OUTSIDE") if judged else "(upstream, not judged)"
        print(f"{cache:<14} {a:8.4f} {b:8.4f} {ratio:7.4f}  {mark}")
        if judged and not ok:
            failed.append(cache)
    if failed:
        sys.exit(f"kld_match: {', '.join(failed)} differ by more than {args.tolerance:.0%}")
    print(f"every turbo type within {args.tolerance:.0%}")


if __name__ == "__main__":
    main()
