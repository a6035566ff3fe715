# Release artifacts and container images, from one x86_64 Debian/Ubuntu host.
#
#   make dist      every release binary into dist/<target>/classify (stripped) + SHA256SUMS
#   make static    only the three static binaries the images carry
#   make stage     dist/image/: the images' build context, a root filesystem per architecture
#   make images    the three images with buildah (offline), tagged $(IMAGE):$(VERSION)-<arch>
#   make test-images  builds them, checks their configuration and runs each one
#
# Needs: rustup targets (`make targets`), Debian's gcc-aarch64-linux-gnu,
# gcc-arm-linux-gnueabihf, gcc-mingw-w64-x86-64 and qemu-user (linkers and runners are
# in .cargo/config.toml); buildah for the images.

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
# Every image has the int8 weights; only x86 also carries the f32 ones (ARM images are
# kept small for SD cards and slow links, and serve int8 by default).
WEIGHTS_int8 := models.toml imagenet-labels.tsv catsdogs-labels.tsv catsdogs-head.safetensors \
	resnet50-int8.safetensors catsdogs-cnn-int8.safetensors
WEIGHTS_f32 := resnet50.safetensors catsdogs-cnn.safetensors

.PHONY: dist static stage images test-images targets clean-dist
.DELETE_ON_ERROR:

dist: $(foreach t,$(DYNAMIC_TARGETS) $(MUSL_TARGETS) $(ARMV7_STATIC) $(WINDOWS_TARGET),dist/$(t)/classify$(if $(findstring windows,$(t)),.exe))
	cd dist && find . -name 'classify*' -type f | sort | xargs sha256sum > SHA256SUMS
	@ls -l dist/*/classify*

static: $(BINARY_amd64) $(BINARY_arm64) $(BINARY_armv7)

targets:
	rustup target add $(DYNAMIC_TARGETS) $(MUSL_TARGETS) $(WINDOWS_TARGET)

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
# /tmp for the lock file. ARM images carry and serve int8 (manifest-level precision).
stage: $(foreach a,$(ARCHES),$(BINARY_$(a)))
	rm -rf dist/image
	install -D -m 0644 Dockerfile dist/image/Dockerfile
	set -e; for arch in $(ARCHES); do \
		root=dist/image/linux-$$arch; \
		case $$arch in amd64) binary=$(BINARY_amd64) ;; arm64) binary=$(BINARY_arm64) ;; \
			armv7) binary=$(BINARY_armv7) ;; *) echo "unknown arch $$arch" >&2; exit 1 ;; esac; \
		install -d -m 0755 $$root/function/weights; \
		install -d -m 1777 $$root/tmp; \
		install -m 0755 $$binary $$root/function/classify; \
		weights="$(WEIGHTS_int8)"; [ $$arch = amd64 ] && weights="$$weights $(WEIGHTS_f32)"; \
		for file in $$weights; do install -m 0644 weights/$$file $$root/function/weights/$$file; done; \
		if [ $$arch != amd64 ]; then \
			{ echo '# ARM images serve int8 unless `precision` says otherwise.'; \
			  echo 'precision = "int8"'; echo; cat weights/models.toml; } > $$root/function/weights/models.toml; \
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

clean-dist:
	rm -rf dist
