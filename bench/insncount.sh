#!/bin/sh
# Guest instructions per image under qemu-user: exact and repeatable, our cost proxy
# for ARM CPUs we do not have (time under qemu means nothing). For each CPU model and
# precision it runs `classify predict` on one and on three copies of a photo, pinned to
# one core (one thread), and halves the difference: decode + preprocess + ResNet-50
# forward of one image (the forward is over 98 % of it).
#
#   bench/insncount.sh [RESULTS.md]     (default bench/results/insncount.md)
#   TARGETS=aarch64 CPUS="cortex-a53 cortex-a76" bench/insncount.sh   (a subset)
#
# Needs the static binaries (`make static`), qemu-user and a C compiler for the
# counting plugin (../shared/tools/qemu-insncount). With bench/tract built for the same
# targets (`bench/tract/build.sh`) and our ResNet-50 exported to ONNX
# (bench/.work/resnet50.onnx, by bench/peers.sh), tract's count comes next to ours.
# x86_64 runs as a Haswell (AVX2 + FMA, no AVX-512: the `avx2` kernels), next to ONNX
# Runtime's Python package from bench/peers.sh's venv under the same qemu, f32 and int8
# (bench/.work/resnet50-int8.onnx): its forwards, 3 minus 1 after no warm-up, halved.
set -eu
cd "$(dirname "$0")/.."
out=${1:-bench/results/insncount.md}
shared=${EDGE_SHARED:-../shared}
plugin_dir=${PLUGIN_DIR:-target/qemu-insncount}
[ -f "$plugin_dir/libinsncount.so" ] || "$shared/tools/qemu-insncount/build.sh" "$plugin_dir" >/dev/null
plugin=$(realpath "$plugin_dir/libinsncount.so")
photo=$(realpath "$shared/data/photos/tiger.jpg")
weights=$(realpath weights/models.toml)

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Runs one configuration on `copies` photos; its stderr (the count, the kernel chosen)
# lands in $log.
run() { # qemu cpu binary precision copies
    qemu=$1 cpu=$2 binary=$3 precision=$4 copies=$5
    set -- "$photo"
    i=1; while [ "$i" -lt "$copies" ]; do set -- "$@" "$photo"; i=$((i + 1)); done
    RUST_LOG=edge_classify::kernels=info RAYON_NUM_THREADS=1 taskset -c 0 \
        "$qemu" -cpu "$cpu" -plugin "$plugin" \
        "$binary" --manifest "$weights" predict --precision "$precision" "$@" 2>"$log" >/dev/null
}
instructions() { sed -n 's/.*guest_insns=\([0-9]*\).*/\1/p' "$log"; }
onnx=bench/.work/resnet50.onnx
# tract's forwards: `iters` timed runs after none of warm-up, the same subtraction. On
# armv7 tract looks for "neon" in /proc/cpuinfo, which qemu-user does not emulate (it
# shows the host's): told so, as a Pi's cpuinfo would, it runs its NEON kernels.
run_tract() { # qemu cpu binary iters
    TRACT_CPU_ARM32_NEON=true taskset -c 0 "$1" -cpu "$2" -plugin "$plugin" "$3" "$onnx" \
        --iters "$4" --warmup 0 2>"$log" >/dev/null
}
# ONNX Runtime's forwards: `iters` runs after none of warm-up, one intra-op thread.
run_ort() { # qemu cpu model iters
    (cd bench/peers && taskset -c 0 "$1" -cpu "$2" -plugin "$plugin" ../.venv/bin/python3 \
        ort_bench.py "../.work/$3.onnx" --threads 1 --iters "$4" --warmup 0 2>"$log" >/dev/null)
}
per_image() { awk -v n="$1" 'BEGIN { printf "%.2fe9", n / 1e9 }'; }

{
    echo "| target | CPU model | precision | kernel | instructions per image |"

    echo "| --- | --- | --- | --- | --- |"
    for config in \
        "qemu-aarch64 cortex-a53 dist/aarch64-unknown-linux-musl/classify aarch64 aarch64-unknown-linux-musl" \
        "qemu-aarch64 cortex-a72 dist/aarch64-unknown-linux-musl/classify aarch64 aarch64-unknown-linux-musl" \
        "qemu-aarch64 cortex-a76 dist/aarch64-unknown-linux-musl/classify aarch64 aarch64-unknown-linux-musl" \
        "qemu-aarch64 max dist/aarch64-unknown-linux-musl/classify aarch64 aarch64-unknown-linux-musl" \
        "qemu-arm cortex-a7 dist/armv7-unknown-linux-gnueabihf-static/classify armv7 armv7-unknown-linux-gnueabihf" \
        "qemu-x86_64 Haswell dist/x86_64-unknown-linux-musl/classify x86_64 x86_64-unknown-linux-musl"; do
        set -- $config
        qemu=$1 cpu=$2 binary=$3 target=$4 triple=$5
        case " ${TARGETS:-aarch64 armv7 x86_64} " in *" $target "*) ;; *) continue ;; esac
        case " ${CPUS:-$cpu} " in *" $cpu "*) ;; *) continue ;; esac
        for precision in f32 int8; do
            run "$qemu" "$cpu" "$binary" "$precision" 1
            one=$(instructions)
            # The product kernel of this precision, from the kernel table's log line.
            kernel=$(sed -n "s/.* kernels .* $precision=\"\{0,1\}\([a-z0-9-]*\).*/\1/p" "$log" | head -n 1)
            [ -n "$kernel" ] || kernel="-"
            run "$qemu" "$cpu" "$binary" "$precision" 3
            three=$(instructions)
            per_image=$(( (three - one) / 2 ))
            printf '| %s | %s | %s | %s | %s |\n' "$target" "$cpu" "$precision" "$kernel" \
                "$(per_image "$per_image")"
        done
        if [ "$target" = x86_64 ] && [ -x bench/.venv/bin/python ]; then
            for model in resnet50 resnet50-int8; do
                [ -f "bench/.work/$model.onnx" ] || continue
                run_ort "$qemu" "$cpu" "$model" 1
                one=$(instructions)
                run_ort "$qemu" "$cpu" "$model" 3
                three=$(instructions)
                precision=f32; [ "$model" = resnet50 ] || precision=int8
                printf '| %s | %s | onnxruntime %s | - | %s |\n' "$target" "$cpu" "$precision" \
                    "$(per_image $(( (three - one) / 2 )))"
            done
        fi
        tract=bench/tract/target/$triple/release/tract-peer
        if [ -x "$tract" ] && [ -f "$onnx" ]; then
            run_tract "$qemu" "$cpu" "$tract" 1
            one=$(instructions)
            run_tract "$qemu" "$cpu" "$tract" 3
            three=$(instructions)
            printf '| %s | %s | tract f32 | - | %s |\n' "$target" "$cpu" \
                "$(per_image $(( (three - one) / 2 )))"
        fi
    done
} | tee "$out"
