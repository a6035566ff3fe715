"""Medians over rounds of each engine's median latency, and ratios to ONNX Runtime.
Usage: table.py RAW.jsonl [TITLE]"""
import json
import statistics
import sys
from collections import defaultdict

runs = defaultdict(list)
loads = defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    engine = f"classify {r['precision']}" if "precision" in r else r["model"]
    runs[(engine, r["threads"])].append(r["median_ms"])
    loads[engine].append(r["load_s"])

engines = ["classify f32", "onnxruntime f32", "pytorch f32", "tract f32", "classify int8",
           "onnxruntime int8"]
peer = {"classify f32": "onnxruntime f32", "classify int8": "onnxruntime int8"}
if len(sys.argv) > 2:
    print(f"### {sys.argv[2]}\n")
print("| engine | 1 thread (ms) | 2 threads (ms) | vs ONNX Runtime, 1 / 2 threads | load (s) |")
print("| --- | --- | --- | --- | --- |")
for engine in (e for e in engines if loads[e]):
    cells, ratios = [], []
    for threads in (1, 2):
        ms = statistics.median(runs[(engine, threads)]) if runs[(engine, threads)] else None
        cells.append(("-" if not ms else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"))
        if engine in peer and ms and runs[(peer[engine], threads)]:
            ratios.append(f"{ms / statistics.median(runs[(peer[engine], threads)]):.2f}")
    load = statistics.median(loads[engine]) if loads[engine] else float("nan")
    ratio = " / ".join(ratios) or ("1.00 (peer)" if engine in peer.values() else "-")
    print(f"| {engine} | {cells[0]} | {cells[1]} | {ratio} | {load:.2f} |")
rounds = len(runs[("classify f32", 1)])
print(f"\nMedians of {rounds} interleaved rounds (ratio < 1: we are faster).")
