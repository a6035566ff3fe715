#!/usr/bin/env python3
"""Checks the images `make images` built with buildah, offline, as a container runtime
would see them: configuration (architecture, entrypoint, user, port, health check,
labels), size, and the root filesystem itself run the way the configuration says
(chroot, working directory, user and environment; ARM images through a static
qemu-user placed in their root). Each running image must answer /_/health, pass its own
HEALTHCHECK command, classify a photo over HTTP and exit 0 on SIGTERM.

    IMAGE=ghcr.io/edge-classify/classify VERSION=0.1.0 deploy/test-images.py [amd64 arm64 armv7]

Needs root (buildah mount, chroot, setuid), buildah and qemu-user-static; reads the photos from
../shared (or $EDGE_SHARED). Prints a table of the figures; exits 1 on any failure.
"""

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EDGE_SHARED", ROOT.parent / "shared"))
IMAGE = os.environ.get("IMAGE", "ghcr.io/edge-classify/classify")
VERSION = os.environ.get("VERSION", "0.1.0")
BUILDAH = ["buildah", "--storage-driver", "vfs"]

# Image tag suffix -> (OCI architecture, variant, how to run its binaries here).
ARCHES = {
    "amd64": ("amd64", "", None),
    "arm64": ("arm64", "", ["qemu-aarch64", "-cpu", "cortex-a72"]),
    "armv7": ("arm", "v7", ["qemu-arm", "-cpu", "cortex-a7"]),
}
# Generous: ARM images run emulated, and int8 quantizes ResNet-50 at load.
START_SECONDS = 600
CLASSIFY_SECONDS = 600


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def buildah(*args):
    return subprocess.run(BUILDAH + list(args), check=True, capture_output=True, text=True).stdout


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http(method, url, body=None, timeout=10):
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def check_config(tag, arch, variant):
    """The image configuration a runtime reads; returns it."""
    info = json.loads(buildah("inspect", "--type", "image", tag))
    oci = info["OCIv1"]
    docker = info["Docker"]
    config = docker["config"]
    check(oci["architecture"] == arch, f"architecture {oci['architecture']}, expected {arch}")
    check(oci.get("variant", "") == variant, f"variant {oci.get('variant')!r}, expected {variant!r}")
    check(oci["os"] == "linux", f"os {oci['os']}")
    check(config["Entrypoint"] == ["/function/classify"], f"entrypoint {config['Entrypoint']}")
    check(config["Cmd"] == ["serve"], f"cmd {config['Cmd']}")
    check(config["User"] == "10001:10001", f"user {config['User']!r}: must not be root")
    check(config["WorkingDir"] == "/function", f"working dir {config['WorkingDir']}")
    check(list(config["ExposedPorts"]) == ["8080/tcp"], f"ports {config['ExposedPorts']}")
    health = config.get("Healthcheck") or {}
    check(
        health.get("Test") == ["CMD", "/function/classify", "healthcheck"],
        f"health check {health}",
    )
    env = dict(item.split("=", 1) for item in config["Env"])
    check(env.get("port") == "8080", f"port variable {env.get('port')}")
    for name in ("read_timeout", "write_timeout", "exec_timeout", "lock_file"):
        check(name in env, f"no {name} in the environment")
    labels = config.get("Labels") or {}
    for label in ("source", "version", "licenses"):
        check(f"org.opencontainers.image.{label}" in labels, f"no OCI {label} label")
    check(
        labels["org.opencontainers.image.version"] == VERSION,
        f"version label {labels['org.opencontainers.image.version']}",
    )
    return config


def tree_bytes(root):
    return sum(p.lstat().st_size for p in Path(root).rglob("*") if p.is_file())


def run_image(config, mount, emulator, log_path):
    """Starts the image's entrypoint + cmd as its configuration says: chrooted into its root
    filesystem, in its working directory, as its user, with its environment. ARM images
    run under a static qemu-user copied into that root (removed with the container).
    Returns (process, port, how to run another command the same way)."""
    env = dict(item.split("=", 1) for item in config["Env"])
    port = free_port()
    env["port"] = str(port)
    env["exec_timeout"] = env["write_timeout"] = f"{CLASSIFY_SECONDS}s"
    uid, gid = (int(part) for part in config["User"].split(":"))
    workdir = config["WorkingDir"]
    prefix = []
    if emulator is not None:
        qemu, *flags = emulator
        inside = Path(mount) / ".qemu-static"
        inside.write_bytes(Path(f"/usr/bin/{qemu}-static").read_bytes())
        inside.chmod(0o755)
        prefix = ["/.qemu-static", *flags]

    def enter():
        os.chroot(mount)
        os.chdir(workdir)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    def popen(argv, **kwargs):
        return subprocess.Popen(prefix + argv, env=env, preexec_fn=enter, **kwargs)

    log = open(log_path, "wb")
    process = popen(config["Entrypoint"] + config["Cmd"], stdout=log, stderr=subprocess.STDOUT)
    return process, port, popen


def wait_healthy(process, port, log_path):
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        check(process.poll() is None, f"exited with {process.returncode}: {Path(log_path).read_text()}")
        try:
            status, _ = http("GET", f"http://127.0.0.1:{port}/_/ready", timeout=5)
            if status == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
            pass
        time.sleep(0.5)
    raise Failure(f"not ready within {START_SECONDS} s: {Path(log_path).read_text()}")


# Image size goal: the ARM images with the int8 ResNet-50 and CNN, binary included (38.5
# MB), plus EfficientNet-Lite0's f32 file (18.8 MB) until it has an int8 one (about 5 MB).
SIZE_LIMIT_MB = {"arm64": 60, "armv7": 60}
INT8_WEIGHTS = ["resnet50-int8.safetensors", "catsdogs-cnn-int8.safetensors"]
F32_WEIGHTS = ["resnet50.safetensors", "catsdogs-cnn.safetensors"]
# What each image carries and serves (see WEIGHTS_* in the Makefile for why).
CARRIES = {"amd64": INT8_WEIGHTS + F32_WEIGHTS, "arm64": INT8_WEIGHTS, "armv7": INT8_WEIGHTS}
SERVES = {"amd64": "f32", "arm64": "int8", "armv7": "int8"}


def test_arch(name):
    arch, variant, emulator = ARCHES[name]
    if emulator is not None and platform.machine() not in ("x86_64", "amd64"):
        emulator = None  # on an ARM host the binaries run natively
    tag = f"{IMAGE}:{VERSION}-{name}"
    figures = {"image": tag}
    config = check_config(tag, arch, variant)
    container = buildah("from", "--pull-never", tag).strip()
    try:
        mount = buildah("mount", container).strip()
        figures["size_mb"] = tree_bytes(mount) / 1e6
        limit = SIZE_LIMIT_MB.get(name)
        check(limit is None or figures["size_mb"] <= limit,
              f"{figures['size_mb']:.1f} MB, over the {limit} MB goal")
        weights = Path(mount) / "function/weights"
        for file in INT8_WEIGHTS + F32_WEIGHTS:
            carried = (weights / file).is_file()
            check(carried == (file in CARRIES[name]),
                  f"/function/weights/{file} {'is there' if carried else 'is missing'}")
        tmp = Path(mount) / "tmp"
        check(tmp.is_dir() and (tmp.stat().st_mode & 0o1777) == 0o1777, "/tmp is not world-writable")
        manifest = tomllib.loads((Path(mount) / "function/weights/models.toml").read_text())
        figures["precision"] = manifest.get("precision", "f32")
        expected = SERVES[name]
        check(figures["precision"] == expected, f"serves {figures['precision']}, expected {expected}")
        log_path = ROOT / "target" / f"image-{name}.log"
        process, port, popen = run_image(config, mount, emulator, log_path)
        try:
            started = time.monotonic()
            wait_healthy(process, port, log_path)
            figures["ready_s"] = time.monotonic() - started
            loaded = f'model=resnet50 precision="{figures["precision"]}"'
            check(loaded in log_path.read_text(), f"the log lacks {loaded}")
            status, _ = http("GET", f"http://127.0.0.1:{port}/_/health")
            check(status == 200, f"/_/health answered {status}")
            # The image's own HEALTHCHECK command, as the runtime would run it.
            probe = popen(config["Healthcheck"]["Test"][1:], stderr=subprocess.PIPE)
            _, probe_error = probe.communicate(timeout=60)
            check(probe.returncode == 0, f"HEALTHCHECK failed: {probe_error.decode()}")
            photo = (SHARED / "data/photos/tiger.jpg").read_bytes()
            started = time.monotonic()
            status, body = http("POST", f"http://127.0.0.1:{port}/", photo, timeout=CLASSIFY_SECONDS)
            figures["classify_s"] = time.monotonic() - started
            check(status == 200, f"POST / answered {status}: {body[:300]!r}")
            answer = json.loads(body)
            top = answer["predictions"][0]
            figures["top1"] = f"{top['label']} {top['score']:.3f}"
            check(top["label"] == "tiger", f"tiger.jpg classified as {top}")
            # Every image carries pets (cat, dog, other): a tiger is not a pet cat.
            status, body = http("GET", f"http://127.0.0.1:{port}/_/models")
            served = [m["name"] for m in json.loads(body)["models"]] if status == 200 else []
            check("pets" in served, f"/_/models answered {status}, serving {served}")
            status, body = http("POST", f"http://127.0.0.1:{port}/pets", photo, timeout=CLASSIFY_SECONDS)
            check(status == 200, f"POST /pets answered {status}: {body[:300]!r}")
            pet = json.loads(body)["predictions"][0]
            figures["pets"] = f"{pet['label']} {pet['score']:.3f}"
            check(pet["label"] == "other", f"pets called tiger.jpg {pet}")
            # And the edge model (f32 on every image until it has int8 weights).
            check("efficientnet-lite0" in served, f"/_/models serving {served}")
            status, body = http(
                "POST", f"http://127.0.0.1:{port}/efficientnet-lite0", photo, timeout=CLASSIFY_SECONDS
            )
            check(status == 200, f"POST /efficientnet-lite0 answered {status}: {body[:300]!r}")
            edge = json.loads(body)["predictions"][0]
            figures["efficientnet-lite0"] = f"{edge['label']} {edge['score']:.3f}"
            check(edge["label"] == "tiger", f"efficientnet-lite0 called tiger.jpg {edge}")
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
            check(code == 0, f"exit {code} after SIGTERM: {log_path.read_text()}")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    finally:
        subprocess.run(BUILDAH + ["rm", container], capture_output=True)
    return figures


def main():
    names = sys.argv[1:] or list(ARCHES)
    failures = 0
    rows = []
    for name in names:
        try:
            figures = test_arch(name)
            rows.append(figures)
            print(f"ok   {name}: {figures}", flush=True)
        except (Failure, subprocess.CalledProcessError, OSError, KeyError, ValueError) as error:
            failures += 1
            detail = getattr(error, "stderr", "") or ""
            print(f"FAIL {name}: {error} {detail}", flush=True)
    print("\n| image | size (MB) | ready (s) | tiger.jpg (s) | precision | top-1 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| `{row['image']}` | {row['size_mb']:.1f} | {row['ready_s']:.1f} | "
            f"{row['classify_s']:.1f} | {row['precision']} | {row['top1']} |"
        )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
