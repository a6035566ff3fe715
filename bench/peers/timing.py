"""What every Python peer prints: the latency of `run` over `iters` calls after `warmup`,
as one JSON line with the fields of `classify bench --format json`."""
import json
import resource
import time


def report(name, threads, run, iters, warmup, load_s, golden_max_abs_diff=None):
    for _ in range(warmup):
        run()
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1e3)
    times.sort()

    def pct(p):
        return times[round((len(times) - 1) * p)]

    print(json.dumps({
        "model": name, "threads": threads, "iters": iters,
        "median_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99),
        "load_s": load_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "golden_max_abs_diff": golden_max_abs_diff,
    }))
