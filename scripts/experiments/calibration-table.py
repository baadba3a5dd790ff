#!/usr/bin/env python3
"""The tables of results/calibration/README.md from the JSON reports there: per model, a row per
kind of text, the KLD of q4_0 and of each turbo type under each calibration.

  python3 scripts/experiments/calibration-table.py results/calibration
"""

import json
import os
import sys

MODELS = [("smollm2-135m", "SmolLM2-135M"), ("gemma3-270m", "Gemma-3-270M")]
KINDS = [("wikitext", "WikiText-2 (control)"), ("code", "Python code"), ("german", "German prose"),
         ("chat", "chat (Debian FAQ)")]
CALIBRATIONS = [("builtin", "built-in"), ("other", "other part"), ("chunk1", "chunk 1")]


def load(folder, model, kind, calibration):
    path = os.path.join(folder, f"{model}-{kind}-{calibration}.json")
    if not os.path.exists(path):
        return None
    return json.load(open(path))


def cell(report, cache):
    if report is None:
        return ""
    for row in report["rows"]:
        if row["cache"] == cache:
            return f"{row['kld']['mean']:.4f} ± {row['kld']['stderr']:.4f}"
    return ""


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "results/calibration"
    for model, title in MODELS:
        print(f"**{title}**, context 512:\n")
        head = ["text", "chunks", "PPL f16", "q4_0"]
        for cache in ("turbo4", "turbo3"):
            head += [f"{cache}, {label}" for _, label in CALIBRATIONS]
        print("| " + " | ".join(head) + " |")
        print("| " + " | ".join("---" for _ in head) + " |")
        for kind, label in KINDS:
            reports = {c: load(folder, model, kind, c) for c, _ in CALIBRATIONS}
            base = reports["builtin"]
            if base is None:
                continue
            row = [label, str(base["chunks"]), f"{base['rows'][0]['ppl']['mean']:.2f}", cell(base, "q4_0")]
            for cache in ("turbo4", "turbo3"):
                row += [cell(reports[c], cache) for c, _ in CALIBRATIONS]
            print("| " + " | ".join(row) + " |")
        print()


if __name__ == "__main__":
    main()
