"""PyTorch peer of `classify bench`: our ResNet-50 v1 safetensors built as a torch module
(BatchNorm folded, as export_onnx.py does), traced, frozen and optimized for inference
(TorchScript), one JSON line per run with the same fields as ort_bench.py.
Usage: torch_bench.py WEIGHTS.safetensors --threads N --iters N [--golden GOLDEN]"""
import argparse
import time
import warnings

import numpy as np
import torch
from safetensors.numpy import load_file
from timing import report

EPS = 1e-5

parser = argparse.ArgumentParser()
parser.add_argument("weights")
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--iters", type=int, default=20)
parser.add_argument("--warmup", type=int, default=3)
parser.add_argument("--name", default="pytorch f32")
parser.add_argument("--golden", help="check logits against a golden safetensors file")
args = parser.parse_args()

# optimize_for_inference is deprecated for torch.compile, which needs a C++ compiler at
# run time; the frozen TorchScript module is the deployment form this peer measures.
warnings.filterwarnings("ignore", category=FutureWarning)
torch.set_num_threads(args.threads)
torch.set_num_interop_threads(1)


def folded_conv(weights, conv, bn, stride):
    """A convolution with its BatchNorm folded in (the same arithmetic as export_onnx.py)."""
    w = weights[f"{conv}.weight"]
    scale = weights[f"{bn}.weight"] / np.sqrt(weights[f"{bn}.running_var"] + EPS)
    bias = weights[f"{bn}.bias"] - weights[f"{bn}.running_mean"] * scale
    k = w.shape[2]
    layer = torch.nn.Conv2d(w.shape[1], w.shape[0], k, stride=stride, padding=k // 2)
    layer.weight.data = torch.from_numpy((w * scale[:, None, None, None]).astype(np.float32))
    layer.bias.data = torch.from_numpy(bias.astype(np.float32))
    return layer


class Bottleneck(torch.nn.Module):
    def __init__(self, weights, prefix, stride, downsample):
        super().__init__()
        # v1: the stride is on the first 1x1 convolution.
        self.reduce = folded_conv(weights, prefix + ".conv1", prefix + ".bn1", stride)
        self.spatial = folded_conv(weights, prefix + ".conv2", prefix + ".bn2", 1)
        self.expand = folded_conv(weights, prefix + ".conv3", prefix + ".bn3", 1)
        self.downsample = (
            folded_conv(weights, prefix + ".downsample.0", prefix + ".downsample.1", stride)
            if downsample else torch.nn.Identity())

    def forward(self, x):
        y = torch.relu(self.reduce(x))
        y = torch.relu(self.spatial(y))
        return torch.relu(self.expand(y) + self.downsample(x))


class ResNet50V1(torch.nn.Module):
    def __init__(self, weights):
        super().__init__()
        self.stem = folded_conv(weights, "conv1", "bn1", 2)
        blocks = []
        for stage, count in enumerate([3, 4, 6, 3]):
            for block in range(count):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(Bottleneck(weights, f"layer{stage + 1}.{block}", stride, block == 0))
        self.blocks = torch.nn.Sequential(*blocks)
        self.fc = torch.nn.Linear(2048, 1000)
        self.fc.weight.data = torch.from_numpy(weights["fc.weight"])
        self.fc.bias.data = torch.from_numpy(weights["fc.bias"])

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.nn.functional.max_pool2d(x, 3, 2, 1)
        x = self.blocks(x)
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32))
started = time.perf_counter()
with torch.no_grad():
    model = ResNet50V1(load_file(args.weights)).eval()
    model = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x)))
load_s = time.perf_counter() - started

with torch.no_grad():
    max_diff = None
    if args.golden:
        golden = load_file(args.golden)
        names = sorted(k[: -len(".input")] for k in golden if k.endswith(".input"))
        max_diff = max(
            float(np.abs(model(torch.from_numpy(golden[n + ".input"])).numpy()
                         - golden[n + ".logits"]).max())
            for n in names)

    report(args.name, args.threads, lambda: model(x), args.iters, args.warmup, load_s, max_diff)
