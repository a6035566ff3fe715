"""Exports our dogs-vs-cats small CNN (Keras-layout safetensors) to ONNX, so the peers
run exactly our weights: three 3x3 convolutions (no padding) + ReLU + 2x2 max pooling,
dense + ReLU, one logit. Input NCHW [n, 3, 150, 150], RGB in 0..1.
Usage: export_cnn_onnx.py WEIGHTS.safetensors OUT.onnx"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

SIZE = 150

weights = load_file(sys.argv[1])
nodes, inits = [], []
x, side, channels = "input", SIZE, 3
for block in ("conv1", "conv2", "conv3"):
    kernel = weights[f"{block}.kernel"]  # [3, 3, in, out]
    inits.append(numpy_helper.from_array(kernel.transpose(3, 2, 0, 1).copy(), block + ".w"))
    inits.append(numpy_helper.from_array(weights[f"{block}.bias"], block + ".b"))
    nodes.append(helper.make_node("Conv", [x, block + ".w", block + ".b"], [block + ".out"],
                                  kernel_shape=[3, 3]))
    nodes.append(helper.make_node("Relu", [block + ".out"], [block + ".relu"]))
    nodes.append(helper.make_node("MaxPool", [block + ".relu"], [block + ".pool"],
                                  kernel_shape=[2, 2], strides=[2, 2]))
    x, side, channels = block + ".pool", (side - 2) // 2, kernel.shape[3]
# Keras flattens [h, w, c]; ONNX's Flatten of NCHW gives [c, h, w]: reorder the rows.
dense1 = weights["dense1.kernel"].reshape(side, side, channels, -1).transpose(2, 0, 1, 3)
inits.append(numpy_helper.from_array(dense1.reshape(side * side * channels, -1).copy(), "dense1.w"))
inits.append(numpy_helper.from_array(weights["dense1.bias"], "dense1.b"))
inits.append(numpy_helper.from_array(weights["dense2.kernel"], "dense2.w"))
inits.append(numpy_helper.from_array(weights["dense2.bias"], "dense2.b"))
nodes.append(helper.make_node("Flatten", [x], ["flat"]))
nodes.append(helper.make_node("Gemm", ["flat", "dense1.w", "dense1.b"], ["hidden"]))
nodes.append(helper.make_node("Relu", ["hidden"], ["hidden.relu"]))
nodes.append(helper.make_node("Gemm", ["hidden.relu", "dense2.w", "dense2.b"], ["logit"]))

graph = helper.make_graph(
    nodes, "catsdogs_cnn",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, SIZE, SIZE])],
    [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["n", 1])],
    inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
onnx.checker.check_model(model)
onnx.save(model, sys.argv[2])
