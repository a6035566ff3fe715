"""ONNX Runtime peer of `classify bench`: one JSON line per run with the same fields.
Usage: ort_bench.py MODEL.onnx --threads N --iters N [--size 224] [--name NAME] [--golden GOLDEN]"""
import argparse
import time

import numpy as np
import onnxruntime as ort
from timing import report

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--iters", type=int, default=20)
parser.add_argument("--warmup", type=int, default=3)
parser.add_argument("--size", type=int, default=224, help="the input's side")
parser.add_argument("--name", default="onnxruntime")
parser.add_argument("--golden", help="check logits against a golden safetensors file")
args = parser.parse_args()

started = time.perf_counter()
options = ort.SessionOptions()
options.intra_op_num_threads = args.threads
options.inter_op_num_threads = 1
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
load_s = time.perf_counter() - started

max_diff = None
if args.golden:
    from safetensors.numpy import load_file
    golden = load_file(args.golden)
    names = sorted(k[: -len(".input")] for k in golden if k.endswith(".input"))
    max_diff = max(
        float(np.abs(session.run(None, {"input": golden[n + ".input"]})[0] - golden[n + ".logits"]).max())
        for n in names)

x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size), dtype=np.float32)
report(args.name, args.threads, lambda: session.run(None, {"input": x}), args.iters, args.warmup,
       load_s, max_diff)
