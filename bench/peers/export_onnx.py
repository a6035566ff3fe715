"""Exports our ResNet-50 v1 safetensors to ONNX (BatchNorm folded), so the peers run
exactly our weights. Usage: export_onnx.py WEIGHTS.safetensors OUT.onnx"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

EPS = 1e-5

weights = load_file(sys.argv[1])
nodes, inits = [], []


def fold(conv, bn):
    w = weights[f"{conv}.weight"]
    scale = weights[f"{bn}.weight"] / np.sqrt(weights[f"{bn}.running_var"] + EPS)
    bias = weights[f"{bn}.bias"] - weights[f"{bn}.running_mean"] * scale
    return (w * scale[:, None, None, None]).astype(np.float32), bias.astype(np.float32)


def conv_bn(x, conv, bn, stride, relu):
    w, b = fold(conv, bn)
    k = w.shape[2]
    inits.append(numpy_helper.from_array(w, conv + ".w"))
    inits.append(numpy_helper.from_array(b, conv + ".b"))
    out = conv + ".out"
    nodes.append(helper.make_node("Conv", [x, conv + ".w", conv + ".b"], [out],
                                  kernel_shape=[k, k], strides=[stride, stride],
                                  pads=[k // 2] * 4))
    if relu:
        nodes.append(helper.make_node("Relu", [out], [out + ".relu"]))
        out += ".relu"
    return out


x = conv_bn("input", "conv1", "bn1", 2, True)
nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]))
x = "pool"
for stage, blocks in enumerate([3, 4, 6, 3]):
    for block in range(blocks):
        p = f"layer{stage + 1}.{block}"
        stride = 2 if stage > 0 and block == 0 else 1  # v1: on the 1x1 conv1
        y = conv_bn(x, p + ".conv1", p + ".bn1", stride, True)
        y = conv_bn(y, p + ".conv2", p + ".bn2", 1, True)
        y = conv_bn(y, p + ".conv3", p + ".bn3", 1, False)
        shortcut = x
        if block == 0:
            shortcut = conv_bn(x, p + ".downsample.0", p + ".downsample.1", stride, False)
        nodes.append(helper.make_node("Add", [y, shortcut], [p + ".add"]))
        nodes.append(helper.make_node("Relu", [p + ".add"], [p + ".out"]))
        x = p + ".out"
nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
nodes.append(helper.make_node("Flatten", ["gap"], ["features"]))
inits.append(numpy_helper.from_array(weights["fc.weight"], "fc.w"))
inits.append(numpy_helper.from_array(weights["fc.bias"], "fc.b"))
nodes.append(helper.make_node("Gemm", ["features", "fc.w", "fc.b"], ["logits"], transB=1))

graph = helper.make_graph(
    nodes, "resnet50_v1",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 224, 224])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 1000])],
    inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
onnx.checker.check_model(model)
onnx.save(model, sys.argv[2])
