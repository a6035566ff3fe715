#!/bin/sh
# Builds tract-peer for this machine (bench/peers.sh) and for the ARM targets of
# bench/insncount.sh: static aarch64 (musl) and armv7 (glibc linked statically), like
# our own `make static` binaries. Linkers and runners come from ../../.cargo/config.toml.
set -eu
cd "$(dirname "$0")"
cargo build --locked --release
# The cc crate would look for aarch64-linux-musl-gcc; Debian's gnu cross gcc assembles
# tract's kernels as well.
CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc \
    cargo build --locked --release --target aarch64-unknown-linux-musl
CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked --release --target armv7-unknown-linux-gnueabihf
