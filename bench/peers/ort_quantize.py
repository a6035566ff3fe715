"""ONNX Runtime int8 static quantization (QDQ, per-channel weights) of an exported model,
calibrated on photos preprocessed as our manifest says: for the ResNet-50, photos of
../shared/data/imagenet-sample (resize 256, centre crop 224, BGR, caffe means); with
--squash SIZE, for the small CNN, dogs-vs-cats photos squashed to SIZE x SIZE, RGB in 0..1.
Usage: ort_quantize.py IN.onnx OUT.onnx SAMPLE_DIR [--count 64] [--squash SIZE]"""
import argparse
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def squash(path, size):
    image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    return (np.asarray(image, dtype=np.float32) / 255).transpose(2, 0, 1)[None].copy()


def preprocess(path):
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    w, h = image.size
    left, top = (w - 224) // 2, (h - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    x = np.asarray(image, dtype=np.float32)[:, :, ::-1] - MEAN_BGR
    return x.transpose(2, 0, 1)[None].copy()


class Reader(CalibrationDataReader):
    def __init__(self, files, prepare):
        self.inputs = iter([{"input": prepare(f)} for f in files])

    def get_next(self):
        return next(self.inputs, None)


parser = argparse.ArgumentParser()
parser.add_argument("model_in")
parser.add_argument("model_out")
parser.add_argument("samples")
parser.add_argument("--count", type=int, default=64)
parser.add_argument("--squash", type=int, help="squash photos to this side, RGB in 0..1")
args = parser.parse_args()
if args.squash:  # photos taken evenly through the class folders
    listing = sorted(Path(args.samples).rglob("*.jpg"))
    files = listing[:: max(1, len(listing) // args.count)][: args.count]
    prepare = lambda f: squash(f, args.squash)  # noqa: E731
else:
    files = sorted(Path(args.samples).glob("*.jpg"))[: args.count]
    prepare = preprocess
prepared = args.model_out + ".pre.onnx"
quant_pre_process(args.model_in, prepared)
quantize_static(prepared, args.model_out, Reader(files, prepare), quant_format=QuantFormat.QDQ,
                per_channel=True, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8)
Path(prepared).unlink()
