#!/usr/bin/env python3
"""Soak test of `classify serve` (issue 8): mixed traffic at concurrency 16 for 10 minutes
- valid photos of every size in ../shared, bad inputs, slow clients sending a byte per
second, clients that hang up mid-body and mid-answer - then checks that

  * no answer was a 5xx other than 503/504 (load shedding and timeouts, by design),
  * no request was lost: every request got exactly one answer, or a clean connection
    error that the client itself caused (its hang-up, or the server cutting a slow
    client at read_timeout),
  * resident memory after the run is within 10% of what it was after the warm-up,
  * open file descriptors are back to their count before the traffic.

Standard library only. Usage:
  bench/soak.py [--binary target/release/classify] [--minutes 10] [--concurrency 16]
Prints the figures and writes bench/results/soak.md; exits 1 if a check fails.
"""
import argparse
import collections
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EDGE_SHARED", ROOT.parent / "shared"))


def args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default=str(ROOT / "target/release/classify"))
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--warmup-seconds", type=float, default=30.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args()


def photos():
    files = sorted((SHARED / "data/photos").glob("*.jpg"))
    files += sorted((SHARED / "data/imagenet-sample").glob("*.jpg"))[:60]
    files += sorted((SHARED / "data/catsdogs/val/cat").glob("*.jpg"))[:20]
    return [f.read_bytes() for f in files]


class Server:
    def __init__(self, binary):
        self.port = None
        env = dict(os.environ, read_timeout="5s", write_timeout="10s", exec_timeout="10s",
                   RUST_LOG="warn")
        self.process = subprocess.Popen(
            [binary, "serve", "--bind", "127.0.0.1", "--port", "0", "--lock-file",
             "/tmp/edge-classify-soak.lock"],
            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        for line in self.process.stderr:
            if line.startswith("classify: listening on http://"):
                self.port = int(line.rsplit(":", 1)[1])
                break
        threading.Thread(target=lambda: collections.deque(self.process.stderr, maxlen=0),
                         daemon=True).start()
        if self.port is None:
            sys.exit("the server did not start")
        while exchange(self.port, b"GET /_/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] != 200:
            time.sleep(0.1)

    def rss_mb(self):
        for line in open(f"/proc/{self.process.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    def fds(self):
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def stop(self):
        self.process.terminate()
        return self.process.wait(timeout=60)


def exchange(port, head, body=b"", timeout=60):
    """Sends one request, returns (status, body) or raises OSError."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data.startswith(b"HTTP/1.1 "):
        raise ConnectionError("no answer")
    return int(data[9:12]), data.split(b"\r\n\r\n", 1)[-1]


def post_head(length, content_type="image/jpeg"):
    return (f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.problems = collections.Counter()

    def add(self, key, problem=None):
        with self.lock:
            self.counts[key] += 1
            if problem:
                self.problems[problem] += 1


def valid(port, rng, images, tally):
    body = rng.choice(images)
    try:
        status, _ = exchange(port, post_head(len(body)), body)
    except OSError as e:
        return tally.add("valid: connection error", f"valid request lost ({e.__class__.__name__})")
    problem = None if status in (200, 429, 503, 504) else f"valid photo answered {status}"
    tally.add(f"valid: {status}", problem)


BAD = [
    (b"", "image/jpeg"),
    (b"\xff\xd8\xff\xe0 truncated jpeg", "image/jpeg"),
    (os.urandom(5000), "application/octet-stream"),
    (b"--x\r\nno boundary in header", "multipart/form-data"),
    (b"GIF89a\xff\xff\xff\xff", "image/gif"),
]


def bad(port, rng, images, tally):
    if rng.random() < 0.3:  # a real photo cut short
        photo = rng.choice(images)
        body, content_type = photo[: rng.randrange(1, len(photo) - 2)], "image/jpeg"
    else:
        body, content_type = rng.choice(BAD)
    try:
        status, _ = exchange(port, post_head(len(body), content_type), body)
    except OSError as e:
        return tally.add("bad: connection error", f"bad request lost ({e.__class__.__name__})")
    problem = None if 400 <= status < 500 or status in (503, 504) else f"bad input answered {status}"
    tally.add(f"bad: {status}", problem)


def slow(port, rng, images, tally):
    """A byte per second; the server cuts it at read_timeout (5 s)."""
    body = rng.choice(images)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(post_head(len(body)))
            for byte in body[:12]:
                s.sendall(bytes([byte]))
                time.sleep(1.0)
            data = s.recv(65536)
        if data.startswith(b"HTTP/1.1 5") and not data.startswith((b"HTTP/1.1 503", b"HTTP/1.1 504")):
            return tally.add("slow: 5xx", "slow client got a 5xx")
        tally.add("slow: answered" if data else "slow: cut by the server")
    except OSError:
        tally.add("slow: cut by the server")


def hang_up_mid_body(port, rng, images, tally):
    body = rng.choice(images)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(post_head(len(body)) + body[: len(body) // 2])
    tally.add("hang-up mid-body")


def hang_up_mid_answer(port, rng, images, tally):
    body = rng.choice(images)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(post_head(len(body)) + body)
        s.recv(5)  # the answer has begun
    tally.add("hang-up mid-answer")


SCENARIOS = [(valid, 60), (bad, 20), (slow, 4), (hang_up_mid_body, 8), (hang_up_mid_answer, 8)]


def traffic(port, seconds, concurrency, seed, images, scenarios):
    tally = Tally()
    deadline = time.monotonic() + seconds
    kinds, weights = zip(*scenarios)

    def client(i):
        rng = random.Random(seed * 1000 + i)
        while time.monotonic() < deadline:
            try:
                rng.choices(kinds, weights)[0](port, rng, images, tally)
            except OSError as e:
                tally.add("client-side error", f"unexpected {e.__class__.__name__}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally


def main():
    a = args()
    images = photos()
    server = Server(a.binary)
    fds_before = server.fds()
    traffic(server.port, a.warmup_seconds, a.concurrency, a.seed, images, [(valid, 1)])
    time.sleep(2)
    rss_warm = server.rss_mb()
    started = time.monotonic()
    tally = traffic(server.port, a.minutes * 60, a.concurrency, a.seed + 1, images, SCENARIOS)
    elapsed = time.monotonic() - started
    time.sleep(7)  # slow clients cut, idle trim done
    rss_after, fds_after = server.rss_mb(), server.fds()
    # The server still answers after everything.
    alive = exchange(server.port, b"GET /_/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 200
    exit_code = server.stop()

    total = sum(tally.counts.values())
    checks = {
        "no 5xx but 503/504, no lost request": not tally.problems,
        "RSS after within 10% of after warm-up": rss_after <= rss_warm * 1.10,
        "open fds back to baseline": fds_after <= fds_before,
        "healthy after the run, clean exit on SIGTERM": alive and exit_code == 0,
    }
    lines = [
        f"# Soak: {a.minutes:g} min of mixed traffic at concurrency {a.concurrency}",
        "",
        f"{total} requests in {elapsed:.0f} s ({total / elapsed:.1f}/s).",
        "",
        "| outcome | count |", "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in sorted(tally.counts.items())],
        "",
        f"RSS after warm-up {rss_warm:.0f} MB, after the run {rss_after:.0f} MB "
        f"({(rss_after / rss_warm - 1) * 100:+.1f}%); open fds {fds_before} before, {fds_after} after.",
        "",
        *[f"- [{'x' if ok else ' '}] {name}" for name, ok in checks.items()],
        *[f"- problem: {p} x{n}" for p, n in tally.problems.items()],
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    (ROOT / "bench/results").mkdir(exist_ok=True)
    (ROOT / "bench/results/soak.md").write_text(report)
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
