"""Status server under load: latency and rate of /api/tasks and /health with 1,000 tasks while 2 conversions run.

Phases, all against one daemon on loopback (2 workers, 1,000 finished tasks pre-loaded in its store):
  1. idle:   2 conversions with no HTTP traffic (their durations are the baseline)
  2. loaded: 2 conversions while an open-loop client sends 200 requests/s, alternating /api/tasks and /health
  3. peak:   closed-loop requests/s of each endpoint with 8 client threads for a few seconds
Prints p50/p99 per endpoint, the achieved rate, and the loaded/idle conversion-time ratio.
Usage: .venv/bin/python bench/status.py [--rate 200] [--rounds 2] [--size 96]
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from rknn_dropbox.store import COMPLETED, FAILED, JobRecord, JobStore  # noqa: E402

ENDPOINTS = ("/api/tasks", "/health")


def preload_store(state: Path, n: int) -> None:
    store = JobStore(state / "jobs.sqlite3")
    now = time.time() - 86400
    for i in range(n):
        t = now + i * 10
        store.add(JobRecord(id=time.strftime("%Y%m%d-%H%M%S", time.localtime(t)) + f"-{i:06x}", name=f"old{i}",
                            format="onnx", status=COMPLETED if i % 7 else FAILED, progress=100.0,
                            target="rk3588", created_at=t, started_at=t + 1, finished_at=t + 4,
                            outputs=[f"old{i}.rknn"], error=None if i % 7 else "the toolkit failed"))
    store.close()


def write_conv_stack(path: Path, layers: int, channels: int, size: int, seed: int) -> Path:
    """A chain of Conv+Relu layers: enough graph for the toolkit's build to take seconds, not milliseconds."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    nodes, inits, prev, cin = [], [], "x", 3
    for i in range(layers):
        w = (rng.standard_normal((channels, cin, 3, 3)) * 0.05).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev, cin = f"r{i}", channels
    graph = helper.make_graph(nodes, "conv_stack",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, channels, size, size])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def get(port: int, path: str) -> float:
    """One request on a fresh connection (the server speaks HTTP/1.0); its latency in seconds."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"{path}: HTTP {resp.status}")
    return time.perf_counter() - started


def open_loop(port: int, rate: float, stop: threading.Event, threads: int = 8) -> dict[str, list[float]]:
    """Send `rate` requests/s on a fixed schedule (late requests are not skipped) until `stop` is set."""
    results: dict[str, list[float]] = {p: [] for p in ENDPOINTS}
    lock = threading.Lock()
    start = time.perf_counter()
    counter = iter(range(10**9))

    def run() -> None:
        while not stop.is_set():
            with lock:
                k = next(counter)
            due = start + k / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            path = ENDPOINTS[k % 2]
            latency = get(port, path) + max(0.0, -delay)  # time since the request was due
            with lock:
                results[path].append(latency)

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    stop.wait()
    for w in workers:
        w.join(15)
    return results


def closed_loop(port: int, path: str, seconds: float, threads: int = 8) -> float:
    count = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def run() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            get(port, path)
            with lock:
                count += 1

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return count / seconds


def convert_two(root: Path, port: int, tag: str, size: int, layers: int) -> list[float]:
    """Drop two models at once and wait for both; their conversion durations (worker start to delivery)."""
    names = [f"{tag}a", f"{tag}b"]
    for name in names:  # a fresh seed per model: the result cache must not serve it
        seed = int.from_bytes(name.encode()[-6:], "big") % (2**31)
        src = write_conv_stack(root / "src" / f"{name}.onnx", layers, 64, size, seed)
        shutil.copy(src, root / "inbox" / f"{name}.onnx")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/tasks?limit=20")
        tasks = {t["name"]: t for t in json.loads(conn.getresponse().read())["tasks"]}
        conn.close()
        if all(tasks.get(n, {}).get("status") in ("completed", "failed") for n in names):
            bad = [n for n in names if tasks[n]["status"] != "completed"]
            if bad:
                raise RuntimeError(f"conversion failed: {tasks[bad[0]]['error']}")
            return [tasks[n]["duration"] for n in names]
        time.sleep(0.2)
    raise RuntimeError("conversions did not finish in 300 s")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s during the loaded phase")
    parser.add_argument("--rounds", type=int, default=2, help="idle and loaded rounds of 2 conversions each")
    parser.add_argument("--size", type=int, default=224, help="input size of the generated ONNX model")
    parser.add_argument("--layers", type=int, default=48, help="Conv+Relu layers of the generated model")
    parser.add_argument("--tasks", type=int, default=1000, help="finished tasks pre-loaded in the store")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rknn-bench-status-"))
    (root / "inbox").mkdir()
    (root / "state").mkdir()
    preload_store(root / "state", args.tasks)
    (root / "config.toml").write_text('inbox = "inbox"\noutbox = "outbox"\nfailed = "failed"\nstate_dir = "state"\n'
                                      'workers = 2\nstable_seconds = 0.5\n[http]\nport = 0\n')
    proc = subprocess.Popen([sys.executable, "-m", "rknn_dropbox", "run", "--config", str(root / "config.toml")],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=open(root / "daemon.log", "wb"))
    try:
        deadline = time.monotonic() + 60
        while not (root / "state" / "daemon.json").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not start; see {root / 'daemon.log'}")
            time.sleep(0.1)
        port = json.loads((root / "state" / "daemon.json").read_text())["port"]
        convert_two(root, port, "warm", args.size, args.layers)  # workers import the toolkit; not measured
        idle: list[float] = []
        loaded: list[float] = []
        latencies: dict[str, list[float]] = {p: [] for p in ENDPOINTS}
        sent_seconds = 0.0
        daemon_cpu = client_cpu = 0.0
        daemon = psutil.Process(proc.pid)
        for r in range(args.rounds):
            idle += convert_two(root, port, f"idle{r}", args.size, args.layers)
            stop = threading.Event()
            box: dict[str, dict[str, list[float]]] = {}
            client = threading.Thread(target=lambda: box.setdefault("r", open_loop(port, args.rate, stop)))
            t0 = time.perf_counter()
            cpu0, own0 = daemon.cpu_times(), time.process_time()
            client.start()
            loaded += convert_two(root, port, f"load{r}", args.size, args.layers)
            stop.set()
            client.join()
            sent_seconds += time.perf_counter() - t0
            cpu1 = daemon.cpu_times()
            daemon_cpu += cpu1.user + cpu1.system - cpu0.user - cpu0.system
            client_cpu += time.process_time() - own0
            for p in ENDPOINTS:
                latencies[p] += box["r"][p]
        total = sum(len(v) for v in latencies.values())
        print(f"store: {args.tasks} finished tasks + {4 * args.rounds + 2} bench jobs; /api/tasks returns 100 per page")
        print(f"loaded phase: {total} requests in {sent_seconds:.1f} s = {total / sent_seconds:.0f} requests/s "
              f"(target {args.rate:.0f}) while 2 conversions ran")
        print(f"  CPU during the loaded phase: daemon process (loop + status server, not its workers) "
              f"{100 * daemon_cpu / sent_seconds:.0f}% of a core, this client {100 * client_cpu / sent_seconds:.0f}%; "
              f"{psutil.cpu_count()} CPUs")
        for p in ENDPOINTS:
            v = latencies[p]
            print(f"  {p:<11} n={len(v):5d}  p50 {pct(v, 0.50):6.2f} ms  p99 {pct(v, 0.99):6.2f} ms  "
                  f"max {max(v) * 1000:6.2f} ms")
        for p in ENDPOINTS:
            print(f"peak (8 client threads, 3 s, no conversions): {p:<11} {closed_loop(port, p, 3.0):7.0f} requests/s")
        ratio = statistics.mean(loaded) / statistics.mean(idle)
        print(f"conversion time: idle mean {statistics.mean(idle):.2f} s {['%.2f' % x for x in idle]}, "
              f"loaded mean {statistics.mean(loaded):.2f} s {['%.2f' % x for x in loaded]}, ratio {ratio:.2f}")
        return 0
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
