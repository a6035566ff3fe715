#!/usr/bin/env bash
# Side-by-side with the peers on this machine: `classify bench` (f32, int8) against ONNX
# Runtime (fp32, int8 static QDQ), PyTorch (frozen TorchScript, f32) and tract (f32, one
# thread: bench/tract, its own crate), all running our own weights, exported from the
# safetensors; then the dogs-vs-cats small CNN against ONNX Runtime (fp32, int8 static).
# The venv it creates takes ~6 GB (PyPI's torch brings its CUDA libraries).
# Interleaved round by round; medians and ratios go to bench/results/peers.md.
#   bench/peers.sh [ROUNDS] [ITERS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
ITERS=${2:-20}
SHARED=${EDGE_SHARED:-../shared}
VENV=bench/.venv
WORK=bench/.work
mkdir -p "$WORK" bench/results

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q onnxruntime onnx numpy safetensors pillow sympy
fi
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/pip" install -q torch
cargo build --release --quiet
(cd bench/tract && cargo build --locked --release --quiet)
[ -f "$WORK/resnet50.onnx" ] ||
  "$VENV/bin/python" bench/peers/export_onnx.py weights/resnet50.safetensors "$WORK/resnet50.onnx"
[ -f "$WORK/resnet50-int8.onnx" ] ||
  "$VENV/bin/python" bench/peers/ort_quantize.py "$WORK/resnet50.onnx" "$WORK/resnet50-int8.onnx" \
    "$SHARED/data/imagenet-sample"

RAW="$WORK/peers.jsonl"
: > "$RAW"
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  for threads in 1 2; do
    ./target/release/classify bench --precision f32,int8 --threads "$threads" --iters "$ITERS" \
      --format json >> "$RAW"
    "$VENV/bin/python" bench/peers/ort_bench.py "$WORK/resnet50.onnx" --threads "$threads" \
      --iters "$ITERS" --name "onnxruntime f32" >> "$RAW"
    "$VENV/bin/python" bench/peers/ort_bench.py "$WORK/resnet50-int8.onnx" --threads "$threads" \
      --iters "$ITERS" --name "onnxruntime int8" >> "$RAW"
    "$VENV/bin/python" bench/peers/torch_bench.py weights/resnet50.safetensors \
      --threads "$threads" --iters "$ITERS" >> "$RAW"
    if [ "$threads" = 1 ]; then
      bench/tract/target/release/tract-peer "$WORK/resnet50.onnx" --iters "$ITERS" >> "$RAW"
    fi
  done
done

# The dogs-vs-cats small CNN against ONNX Runtime (int8 calibrated on training photos).
[ -f "$WORK/catsdogs-cnn.onnx" ] ||
  "$VENV/bin/python" bench/peers/export_cnn_onnx.py weights/catsdogs-cnn.safetensors \
    "$WORK/catsdogs-cnn.onnx"
[ -f "$WORK/catsdogs-cnn-int8.onnx" ] ||
  "$VENV/bin/python" bench/peers/ort_quantize.py "$WORK/catsdogs-cnn.onnx" \
    "$WORK/catsdogs-cnn-int8.onnx" "$SHARED/data/catsdogs/train" --squash 150
RAW_CNN="$WORK/peers-cnn.jsonl"
: > "$RAW_CNN"
CNN_ITERS=$((ITERS * 10))
for round in $(seq "$ROUNDS"); do
  echo "small CNN round $round/$ROUNDS" >&2
  for threads in 1 2; do
    ./target/release/classify bench --model catsdogs-cnn --precision f32,int8 \
      --threads "$threads" --iters "$CNN_ITERS" --format json >> "$RAW_CNN"
    for precision in f32 int8; do
      model="$WORK/catsdogs-cnn.onnx"
      [ "$precision" = int8 ] && model="$WORK/catsdogs-cnn-int8.onnx"
      "$VENV/bin/python" bench/peers/ort_bench.py "$model" --size 150 --threads "$threads" \
        --iters "$CNN_ITERS" --name "onnxruntime $precision" >> "$RAW_CNN"
    done
  done
done
{
  "$VENV/bin/python" bench/peers/table.py "$RAW" "ResNet-50, 224 x 224"
  echo
  "$VENV/bin/python" bench/peers/table.py "$RAW_CNN" "Dogs-vs-cats small CNN, 150 x 150"
} | tee bench/results/peers.md
