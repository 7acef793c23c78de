#!/usr/bin/env python3
"""Prints a markdown table of runs that differ only by seed: for each METHOD, the runs
DIR/METHOD-sSEED/summary.json (kiln train's summary), test accuracy per seed, mean ± sample
standard deviation, mean test macro-F1, trainable parameters, mean seconds per epoch and peak
resident memory. Usage: scripts/seed_table.py DIR METHOD[,METHOD...] SEED[,SEED...]"""
import json
import statistics
import sys
from pathlib import Path


def main() -> None:
    root, methods, seeds = Path(sys.argv[1]), sys.argv[2].split(","), [int(s) for s in sys.argv[3].split(",")]
    print("| method | test accuracy % per seed (" + " / ".join(map(str, seeds)) + ") | mean ± sd | "
          "test macro-F1 mean % | trainable params (%) | s / epoch | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for method in methods:
        runs = []
        for seed in seeds:
            path = root / f"{method}-s{seed}" / "summary.json"
            runs.append(json.loads(path.read_text()) if path.is_file() else None)
        done = [r for r in runs if r is not None]
        if not done:
            continue
        accuracy = [100 * r["test"]["accuracy"] for r in done]
        f1 = [100 * r["test"]["macro_f1"] for r in done]
        per_seed = " / ".join(f"{100 * r['test']['accuracy']:.1f}" if r else "not run" for r in runs)
        spread = f" ± {statistics.stdev(accuracy):.1f}" if len(accuracy) > 1 else ""
        first = done[0]
        print(
            f"| {method} | {per_seed} | {statistics.mean(accuracy):.1f}{spread} | {statistics.mean(f1):.1f} | "
            f"{first['trainable_params']:,} ({first['trainable_percent']:.3f}) | "
            f"{statistics.mean(r['seconds_per_epoch'] for r in done):.0f} | "
            f"{max(r['peak_rss_mib'] for r in done):.0f} |"
        )


if __name__ == "__main__":
    main()
