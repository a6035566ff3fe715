# Release artifacts and container images, from one x86_64 Debian/Ubuntu host.
#
#   make dist      every release binary into dist/<target>/classify (stripped) + SHA256SUMS
#   make static    only the three static binaries the images carry
#   make stage     dist/image/: the images' build context, a root filesystem per architecture
#   make images    the three images with buildah (offline), tagged $(IMAGE):$(VERSION)-<arch>
#   make test-images  builds them, checks their configuration and runs each one
#   make test      installs what the tests need (Debian packages when run as root, else
#                  it names them; rustup targets), then runs them: the README's test command
#   make test-windows  the Windows build run under Wine: predict, and serve answering a POST
#   make test-arm  the unit tests, golden logits and int8 checks under qemu: aarch64 on
#                  CPU models without (Pi 3, Pi 4) and with (Pi 5) the dot product and
#                  with i8mm (`max`), armv7 on Cortex-A7 (Pi 2), and the unit tests on a
#                  Cortex-A15 without NEON (test-arm64, test-armv7 alone)
#
# Needs: rustup targets (`make targets`), Debian's gcc-aarch64-linux-gnu,
# gcc-arm-linux-gnueabihf, gcc-mingw-w64-x86-64 (its dlltool too) and qemu-user (linkers
# and runners are in .cargo/config.toml); buildah for the images, wine to run the Windows
# build (`make test-deps` installs them all).

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
IMAGE ?= ghcr.io/edge-classify/classify
CARGO ?= cargo
PROFILE := dist

DYNAMIC_TARGETS := x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
MUSL_TARGETS := x86_64-unknown-linux-musl aarch64-unknown-linux-musl
WINDOWS_TARGET := x86_64-pc-windows-gnu
# armv7 has no musl rust-std: glibc linked statically instead (a separate target dir,
# since the flag changes every crate's build).
ARMV7_STATIC := armv7-unknown-linux-gnueabihf-static

# Image architecture -> the static binary it carries.
BINARY_amd64 := dist/x86_64-unknown-linux-musl/classify
BINARY_arm64 := dist/aarch64-unknown-linux-musl/classify
BINARY_armv7 := dist/$(ARMV7_STATIC)/classify
ARCHES ?= amd64 arm64 armv7

# What the images serve: the manifest and the files it names (not the training records).
# amd64 carries both precisions and serves f32. The ARM images carry only the int8
# weights and serve them (NEON int8 kernels on both; a quarter of the memory of f32 and a
# small image for SD cards and slow links). efficientnet-lite0 has no int8 file yet: every
# image carries its f32 weights (19 MB) and its licence, and serves it at f32.
WEIGHTS_COMMON := models.toml imagenet-labels.tsv catsdogs-labels.tsv catsdogs-head.safetensors \
	pets.safetensors pets-labels.tsv efficientnet-lite0.safetensors efficientnet-lite0-LICENSE.txt
WEIGHTS_INT8 := resnet50-int8.safetensors catsdogs-cnn-int8.safetensors
WEIGHTS_F32 := resnet50.safetensors catsdogs-cnn.safetensors

.PHONY: dist static stage images test-images test-arm test-arm64 test-armv7 targets clean-dist \
	test test-deps test-windows
.DELETE_ON_ERROR:

dist: $(foreach t,$(DYNAMIC_TARGETS) $(MUSL_TARGETS) $(ARMV7_STATIC) $(WINDOWS_TARGET),dist/$(t)/classify$(if $(findstring windows,$(t)),.exe))
	cd dist && find . -name 'classify*' -type f | sort | xargs sha256sum > SHA256SUMS
	@ls -l dist/*/classify*

static: $(BINARY_amd64) $(BINARY_arm64) $(BINARY_armv7)

targets:
	rustup target add $(DYNAMIC_TARGETS) $(MUSL_TARGETS) $(WINDOWS_TARGET)

# What the tests and `make dist` need from Debian: headless Chromium and chromedriver (the
# upload page's browser test), the cross linkers and qemu-user (ARM builds and their
# tests), mingw-w64 and Wine (the Windows build and its run), buildah (the images), and a
# Docker client for `docker stack config` (docker.io, only where no `docker` is found).
# (`make targets` adds the Rust targets the cross builds need.)
TEST_PACKAGES := chromium chromium-driver gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf \
	libc6-dev-arm64-cross libc6-dev-armhf-cross qemu-user qemu-user-static \
	gcc-mingw-w64-x86-64 binutils-mingw-w64-x86-64 wine wine64 buildah python3-pip curl

test-deps:
	@missing=$$(for p in $(TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	command -v docker >/dev/null 2>&1 || missing="$$missing docker.io"; \
	missing=$$(echo $$missing); \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ]; then \
		echo "installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	elif [ -n "$$missing" ]; then \
		echo "the tests need these Debian packages: sudo apt-get install $$missing" >&2; \
		exit 1; \
	fi

test: test-deps
	$(CARGO) test --locked

test-windows: dist/$(WINDOWS_TARGET)/classify.exe
	deploy/windows/wine-test.sh dist/$(WINDOWS_TARGET)/classify.exe

# Cargo decides what to rebuild; make always asks it (FORCE).
FORCE:

dist/%/classify: FORCE
	$(CARGO) build --locked --profile $(PROFILE) --target $* --bin classify
	install -D -m 0755 target/$*/$(PROFILE)/classify $@

dist/$(ARMV7_STATIC)/classify: FORCE
	CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUSTFLAGS="-C target-feature=+crt-static" \
		$(CARGO) build --locked --profile $(PROFILE) --target armv7-unknown-linux-gnueabihf \
		--target-dir target/static --bin classify
	install -D -m 0755 target/static/armv7-unknown-linux-gnueabihf/$(PROFILE)/classify $@

dist/$(WINDOWS_TARGET)/classify.exe: FORCE
	$(CARGO) build --locked --profile $(PROFILE) --target $(WINDOWS_TARGET) --bin classify
	install -D -m 0755 target/$(WINDOWS_TARGET)/$(PROFILE)/classify.exe $@

# An image's root filesystem: /function/classify, /function/weights/, a world-writable
# /tmp for the lock file. The ARM manifests start with `precision = "int8"`.
stage: $(foreach a,$(ARCHES),$(BINARY_$(a)))
	rm -rf dist/image
	install -D -m 0644 Dockerfile dist/image/Dockerfile
	set -e; for arch in $(ARCHES); do \
		root=dist/image/linux-$$arch; \
		case $$arch in \
			amd64) binary=$(BINARY_amd64); weights="$(WEIGHTS_INT8) $(WEIGHTS_F32)"; precision= ;; \
			arm64) binary=$(BINARY_arm64); weights="$(WEIGHTS_INT8)"; precision=int8 ;; \
			armv7) binary=$(BINARY_armv7); weights="$(WEIGHTS_INT8)"; precision=int8 ;; \
			*) echo "unknown arch $$arch" >&2; exit 1 ;; esac; \
		install -d -m 0755 $$root/function/weights; \
		install -d -m 1777 $$root/tmp; \
		install -m 0755 $$binary $$root/function/classify; \
		for file in $(WEIGHTS_COMMON) $$weights; do \
			install -m 0644 weights/$$file $$root/function/weights/$$file; done; \
		if [ -n "$$precision" ]; then \
			{ echo "# This image carries and serves $$precision weights."; \
			  echo "precision = \"$$precision\""; echo; cat weights/models.toml; } \
				> $$root/function/weights/models.toml; \
		fi; \
	done

DOCKERFILE_amd64 := Dockerfile
DOCKERFILE_arm64 := Dockerfile.arm64
DOCKERFILE_armv7 := Dockerfile.arm32v7
PLATFORM_amd64 := linux/amd64
PLATFORM_arm64 := linux/arm64
PLATFORM_armv7 := linux/arm/v7

images: stage
	set -e; for arch in $(ARCHES); do \
		case $$arch in amd64) file=$(DOCKERFILE_amd64); platform=$(PLATFORM_amd64) ;; \
			arm64) file=$(DOCKERFILE_arm64); platform=$(PLATFORM_arm64) ;; \
			armv7) file=$(DOCKERFILE_armv7); platform=$(PLATFORM_armv7) ;; esac; \
		buildah --storage-driver vfs rmi -f $(IMAGE):$(VERSION)-$$arch >/dev/null 2>&1 || true; \
		buildah --storage-driver vfs bud --isolation chroot --format docker --layers=false \
			--build-arg VERSION=$(VERSION) -f $$file --platform $$platform \
			-t $(IMAGE):$(VERSION)-$$arch dist/image; \
	done

test-images: images
	IMAGE=$(IMAGE) VERSION=$(VERSION) deploy/test-images.py $(ARCHES)

# CPU model -> the kernel levels it must offer and lack (a detection that silently fell
# back would otherwise test the portable kernel three times). `max` is the only model with
# the int8 matrix multiply (i8mm: Neoverse V1/N2 servers, no Pi); `cortex-a15-noneon`, a
# Cortex-A15 without NEON (Tegra 2-like), runs the portable fallbacks.
# QEMU's cortex-a53 reports the same features as its cortex-a72 (Armv8.0 with crc and the
# crypto extensions; no dot product) and its cortex-a15 the same as its cortex-a7 (NEON,
# VFPv4, idiv; `LD_SHOW_AUXV=1` shows the same HWCAP words): the same kernels run,
# instruction for instruction, so each pair is tested once (a72: Pi 4; a7: Pi 2), which left room in CI for `make dist` and the Windows run.
# `make test-arm ARM_CPUS="cortex-a53 ..."` runs any model.
ARM_CPUS ?= cortex-a72 cortex-a76 max
ARMV7_CPUS ?= cortex-a7 cortex-a15-noneon
QEMU_CPU_cortex-a15-noneon := cortex-a15,neon=off
EXPECT_cortex-a53 := neon
EXPECT_cortex-a72 := neon
EXPECT_cortex-a76 := neon,neon-dotprod
EXPECT_max := neon,neon-dotprod,neon-i8mm
ABSENT_cortex-a53 := neon-dotprod,neon-i8mm
ABSENT_cortex-a72 := neon-dotprod,neon-i8mm
ABSENT_cortex-a76 := neon-i8mm
EXPECT_cortex-a7 := neon-armv7
EXPECT_cortex-a15 := neon-armv7
ABSENT_cortex-a15-noneon := neon-armv7
# The portable fallbacks are scalar, so the golden-logit runs would add many minutes under
# qemu; that model runs the unit tests (every kernel against its reference) only.
UNIT_ONLY_cortex-a15-noneon := yes
# Tests that would run the same instructions as on a model already run are skipped: on
# aarch64 every level has the same f32, Winograd and depthwise kernels (only the int8 tile
# differs: `kernels::aarch64::tests` keeps that true), so the a76 and max runs leave out
# the f32 tests and the f32 golden logits, which the a72 run covers; candle's training
# code (the gradient checks) does not depend on the CPU model at all.
CPU_INDEPENDENT := --skip models:: --skip train::
SAME_AS_A72 := $(CPU_INDEPENDENT) --skip kernels::f32_weights --skip kernels::gemm \
	--skip kernels::depthwise --skip kernels::winograd
UNIT_SKIP_cortex-a76 := $(SAME_AS_A72)
UNIT_SKIP_max := $(SAME_AS_A72)
UNIT_SKIP_cortex-a15-noneon := $(CPU_INDEPENDENT)
INTEGRATION_cortex-a76 := quantize::the_int8_file_is
INTEGRATION_max := quantize::the_int8_file_is
ARM_TEST := $(CARGO) test --locked --target aarch64-unknown-linux-gnu
ARMV7_TEST := $(CARGO) test --locked --target armv7-unknown-linux-gnueabihf
# The integration tests that check the numbers: golden logits (f32 within 1e-3 of
# PyTorch) and int8 (file = quantized at load, near f32). The rest exercise the server
# and the CLI, not the arithmetic, and take minutes each under emulation.
ARM_INTEGRATION := reference::logits_match_the_golden_vectors efficientnet::logits_match_the_golden_vectors quantize::the_int8_file_is

# One CPU model's run: the runner picks the model, the variables what it must offer.
# $(1) target triple, $(2) its cargo test command, $(3) qemu, $(4) sysroot, $(5) CPU.
define arm_test
	@echo "== $(1) on $(5)"
	EDGE_EXPECT_KERNELS=$(EXPECT_$(5)) EDGE_ABSENT_KERNELS=$(ABSENT_$(5)) \
	CARGO_TARGET_$(call runner_var,$(1))_RUNNER="$(3) -L $(4) -cpu $(or $(QEMU_CPU_$(5)),$(5))" \
		sh -c '$(2) --lib -q -- $(UNIT_SKIP_$(5)) $(if $(UNIT_ONLY_$(5)),,&& $(2) --test tests -q -- $(or $(INTEGRATION_$(5)),$(ARM_INTEGRATION)))'

endef
runner_var = $(shell echo $(1) | tr 'a-z-' 'A-Z_')

test-arm: test-arm64 test-armv7

test-arm64:
	$(ARM_TEST) --lib --test tests --no-run
	$(foreach cpu,$(ARM_CPUS),$(call arm_test,aarch64-unknown-linux-gnu,$(ARM_TEST),qemu-aarch64,/usr/aarch64-linux-gnu,$(cpu)))

test-armv7:
	$(ARMV7_TEST) --lib --test tests --no-run
	$(foreach cpu,$(ARMV7_CPUS),$(call arm_test,armv7-unknown-linux-gnueabihf,$(ARMV7_TEST),qemu-arm,/usr/arm-linux-gnueabihf,$(cpu)))

clean-dist:
	rm -rf dist
