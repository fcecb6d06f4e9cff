"""The real-architecture corpus (tests/zoo.py) through a daemon with 2 workers, against an in-process toolkit loop.

Every corpus model is dropped twice at once: fp16 (model file + sidecar) and int8 (a folder with the generated
calibration jpgs). The baseline is one Python process looping over the same builds with the toolkit's API, applying
the toolkit's own disable_rules advice the same way (convert/rulefix.py) and running the same simulator check.
Prints converted/total for fp16 and int8, both wall times and their ratio, and per model the build time and the
peak RSS of the loop process while it built that model.

Also prints the daemon's timeline: per job when it was claimed, started and finished (seconds after the drop), the
worker's own timings, and how much of the wall time no worker was converting (idle worker-seconds).

The loop runs at the workers' niceness (+10, `--loop-nice`), so on a box shared with other work both sides get the
same CPU share. Besides the wall-time ratio it prints the per-job one for the jobs the daemon delivered without an
accuracy repair (the loop never repairs).

Usage: .venv/bin/python bench/zoo.py [--models a,b,...] [--skip-loop] [--skip-daemon] [--keep DIR] [--loop-nice N]
  (the corpus is exported once into $RKNN_BENCH_ZOO_CACHE, default /tmp/rknn-dropbox-zoo; --keep: work in DIR and
  leave it, the daemon's outbox, failed and daemon.log included)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
import zoo  # noqa: E402
from rknn_dropbox.service.worker import WORKER_NICENESS  # noqa: E402

STABLE_SECONDS = 1.0
CALIBRATION_IMAGES = 8


@dataclass
class Outcome:
    ok: bool
    seconds: float
    note: str = ""
    peak_rss_mb: float = 0.0
    repaired: bool = False  # the daemon's accuracy step analysed and rebuilt it (the loop never does)


def drop_name(name: str, mode: str) -> str:
    return f"{name}-{mode}"


def run_daemon(corpus: dict[str, zoo.ModelInfo], root: Path) -> tuple[float, dict[str, Outcome]]:
    (root / "inbox").mkdir(parents=True)
    (root / "config.toml").write_text(
        'inbox = "inbox"\noutbox = "outbox"\nfailed = "failed"\nstate_dir = "state"\nworkers = 2\n'
        f"stable_seconds = {STABLE_SECONDS}\ntimeout_seconds = 1800\n[http]\nport = 0\n")
    names = zoo.write_drops(corpus, root / "inbox" / ".staging", calibration_images=CALIBRATION_IMAGES)
    proc = subprocess.Popen([sys.executable, "-m", "rknn_dropbox", "run", "--config", str(root / "config.toml")],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=open(root / "daemon.log", "wb"),
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        while not (root / "state" / "daemon.json").exists():
            time.sleep(0.05)
        wait_for_warm_workers(proc.pid, 2)
        staging = root / "inbox" / ".staging"
        start, dropped_at = time.monotonic(), time.time()
        for entry in sorted(staging.iterdir()):
            os.rename(entry, root / "inbox" / entry.name)  # all at once, complete
        while sum((root / d / n).is_dir() for d in ("outbox", "failed") for n in names) < len(names):
            time.sleep(0.1)
        elapsed = time.monotonic() - start
    finally:
        proc.terminate()
        proc.wait(60)
    outcomes = {}
    for n in names:
        done = root / "outbox" / n / "result.json"
        if done.exists():
            r = json.loads(done.read_text())
            ver = [v.get("status") for v in (r.get("verification") or {}).values()]
            rules = [w["disable_rules"] for w in r.get("workarounds", [])]
            outcomes[n] = Outcome(True, r.get("duration", 0.0), f"verify {','.join(ver) or '-'}"
                                  + (f"; disable_rules {rules[0]}" if rules else ""),
                                  repaired="analysis" in (r.get("timings") or {}))
        else:
            e = json.loads((root / "failed" / n / "error.json").read_text())
            outcomes[n] = Outcome(False, 0.0, e.get("error", "")[:90], repaired="repair" in json.dumps(e))
    print_timeline(root / "state" / "jobs.sqlite3", dropped_at, elapsed, outcomes)
    return elapsed, outcomes


def wait_for_warm_workers(daemon_pid: int, workers: int, timeout: float = 300.0) -> None:
    """Until `workers` children of the daemon have the toolkit's native modules mapped (imported before they say
    ready), then a second for the converter's import: the drop meets warm workers, as the loop's imports are done
    before its clock starts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        warm = 0
        for child in psutil.Process(daemon_pid).children():
            try:
                warm += any("/rknn/api/" in m.path for m in child.memory_maps(grouped=True))
            except (psutil.Error, OSError):
                pass
        if warm >= workers:
            time.sleep(1.0)
            return
        time.sleep(0.2)
    raise RuntimeError(f"the daemon's {workers} workers did not import the toolkit within {timeout:.0f} s")


def print_timeline(store: Path, dropped_at: float, elapsed: float, outcomes: dict[str, Outcome]) -> None:
    """Per job: claimed, started, finished (s after the drop); and the worker-seconds no job was running."""
    import sqlite3
    rows = sqlite3.connect(store).execute(
        "SELECT name, created_at, started_at, finished_at FROM jobs ORDER BY started_at").fetchall()
    print("\ndaemon timeline (s after the drop): job, claimed, started, finished, run")
    busy = 0.0
    for name, created, started, finished in rows:
        if started is None or finished is None:
            continue
        busy += finished - started
        print(f"  {name:26s} {created - dropped_at:6.1f} {started - dropped_at:6.1f} {finished - dropped_at:6.1f} "
              f"{finished - started:6.1f}  {outcomes.get(name, Outcome(False, 0)).note[:60]}")
    print(f"  workers busy {busy:.1f} of {2 * elapsed:.1f} worker-seconds ({100 * busy / (2 * elapsed):.0f} %)")


class PeakRss:
    """The highest RSS of this process while the block runs (sampled every 50 ms)."""

    def __enter__(self) -> "PeakRss":
        self.peak = psutil.Process().memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, me.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def loop_one(info: zoo.ModelInfo, quantize: bool, work: Path) -> Outcome:
    """One conversion with the toolkit's API as a script would do it, plus the daemon's advice retry and check."""
    import numpy as np
    import onnxruntime as ort
    from rknn.api import RKNN

    from rknn_dropbox.convert.rulefix import LogWindow, build_with_advice
    from rknn_dropbox.convert.verify import cosine
    dataset = zoo.make_calibration_set(work / "calib", info.input_shape, CALIBRATION_IMAGES) if quantize else None
    log = LogWindow(work / "loop.log")
    holder: dict[str, Any] = {}

    def attempt(rules: list[str]) -> Any:
        rknn = RKNN(verbose=False)
        holder["rknn"] = rknn
        kw: dict[str, Any] = {"disable_rules": rules} if rules else {}
        rknn.config(target_platform="rk3588", mean_values=[info.mean], std_values=[info.std], **kw)
        if rknn.load_onnx(model=str(info.path)) != 0 or rknn.build(
                do_quantization=quantize, dataset=str(dataset) if dataset else None) != 0:
            rknn.release()
            raise RuntimeError("build failed")
        return rknn
    start = time.monotonic()
    with PeakRss() as rss:
        try:
            built = build_with_advice(attempt, log, None, Exception, "2.5.0", say=lambda s: None)
        except Exception as exc:  # noqa: BLE001 - a bench row, not a crash
            return Outcome(False, time.monotonic() - start, f"{type(exc).__name__}", rss.peak / 1e6)
        rknn = built.value
        rknn.export_rknn(str(work / "model.rknn"))
        x = np.random.default_rng(0).random(info.input_shape, dtype=np.float32) * 255
        rknn.init_runtime()
        got = rknn.inference(inputs=[x], data_format="nchw")
        norm = (x - np.array(info.mean, np.float32).reshape(1, 3, 1, 1)) / np.array(info.std, np.float32).reshape(
            1, 3, 1, 1)
        sess = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
        want = sess.run(None, {sess.get_inputs()[0].name: norm})
        cos = min(cosine(g, w) for g, w in zip(got, want))
        rknn.release()
    note = f"cos {cos:.4f}" + (f"; disable_rules {built.workaround.disable_rules}" if built.workaround else "")
    return Outcome(True, time.monotonic() - start, note, rss.peak / 1e6)


def run_loop(corpus: dict[str, zoo.ModelInfo], root: Path, niceness: int) -> tuple[float, dict[str, Outcome]]:
    """The in-process loop, at the workers' niceness (on a box shared with other work, a loop at nice 0 would get
    several times the CPU share of the daemon's workers)."""
    os.nice(niceness)
    from rknn.api import RKNN  # noqa: F401  (imported before the clock starts, as the daemon's workers do)
    outcomes = {}
    devnull = os.open(os.devnull, os.O_WRONLY)
    start = time.monotonic()
    for name, info in corpus.items():
        for mode in ("fp16", "int8"):
            work = root / drop_name(name, mode)
            work.mkdir(parents=True)
            saved = os.dup(1), os.dup(2)
            logfd = os.open(work / "loop.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(logfd, 1)
            os.dup2(logfd, 2)
            try:
                outcomes[drop_name(name, mode)] = loop_one(info, mode == "int8", work)
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in (logfd, *saved):
                    os.close(fd)
            o = outcomes[drop_name(name, mode)]
            print(f"  loop {drop_name(name, mode):24s} {'ok' if o.ok else 'FAILED':6s} {o.seconds:6.1f} s "
                  f"{o.peak_rss_mb:7.0f} MB  {o.note}", flush=True)
    os.close(devnull)
    return time.monotonic() - start, outcomes


def report(corpus: dict[str, zoo.ModelInfo], daemon: tuple[float, dict[str, Outcome]] | None,
           loop: tuple[float, dict[str, Outcome]] | None) -> None:
    if daemon is None:
        return
    t_d, d = daemon
    print("\n| model | mode | daemon | daemon job s | in-process loop | loop s | loop peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for name in corpus:
        for mode in ("fp16", "int8"):
            n = drop_name(name, mode)
            lo = loop[1].get(n) if loop else None
            print(f"| {name} | {mode} | {'ok' if d[n].ok else 'failed'}: {d[n].note} | {d[n].seconds:.1f} | "
                  + (f"{'ok' if lo.ok else 'failed'}: {lo.note} | {lo.seconds:.1f} | {lo.peak_rss_mb:.0f} |"
                     if lo else "- | - | - |"))
    for mode in ("fp16", "int8"):
        ok_d = sum(d[drop_name(n, mode)].ok for n in corpus)
        line = f"{mode}: daemon converted {ok_d}/{len(corpus)}"
        if loop:
            line += f", in-process loop {sum(loop[1][drop_name(n, mode)].ok for n in corpus)}/{len(corpus)}"
        print(line)
    print(f"daemon (2 workers), drop to all done: {t_d:.1f} s")
    if loop:
        plain = [n for n, o in d.items() if o.ok and not o.repaired and loop[1].get(n) and loop[1][n].ok]
        if plain:
            job_s, loop_s = sum(d[n].seconds for n in plain), sum(loop[1][n].seconds for n in plain)
            print(f"the {len(plain)} jobs the daemon delivered without an accuracy repair: daemon job time {job_s:.1f} s "
                  f"(2 at once) vs loop {loop_s:.1f} s (one at a time): {job_s / loop_s:.2f}x per job")
        repaired = [n for n, o in d.items() if o.repaired]
        if repaired:
            print(f"the daemon ran its accuracy step (per-layer analysis, repair candidates) on {', '.join(repaired)}; "
                  "the loop never does")
    if loop:
        print(f"in-process loop: {loop[0]:.1f} s; daemon / (loop / 2) = {t_d / (loop[0] / 2):.2f} "
              "(goal <= 1.10)")
        refused = [drop_name(n, m) for n, i in corpus.items() if i.expect == "data-dependent" for m in zoo.MODES]
        if refused:
            rest = loop[0] - sum(loop[1][n].seconds for n in refused)
            print(f"in-process loop without {', '.join(refused)} (the daemon refuses them before building; the "
                  f"toolkit fails them after {sum(loop[1][n].seconds for n in refused):.0f} s): {rest:.1f} s; "
                  f"daemon / (that / 2) = {t_d / (rest / 2):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join([*zoo.DEFAULT_NAMES, "yolo11n"]))
    ap.add_argument("--skip-loop", action="store_true")
    ap.add_argument("--skip-daemon", action="store_true")
    ap.add_argument("--keep", type=Path, help="work here and keep it (outbox, failed, daemon.log)")
    ap.add_argument("--loop-nice", type=int, default=WORKER_NICENESS,
                    help=f"niceness added for the in-process loop (default {WORKER_NICENESS}, the workers')")
    args = ap.parse_args()
    cache = Path(os.environ.get("RKNN_BENCH_ZOO_CACHE", "/tmp/rknn-dropbox-zoo"))
    corpus = zoo.build_corpus(cache, [m for m in args.models.split(",") if m])
    with tempfile.TemporaryDirectory(prefix="rknn-bench-zoo-") as tmp:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            tmp = str(args.keep)
        print(f"corpus: {', '.join(corpus)}; target rk3588; daemon: 2 workers", flush=True)
        daemon = None
        if not args.skip_daemon:
            daemon = run_daemon(corpus, Path(tmp) / "daemon")
            print(f"daemon done in {daemon[0]:.1f} s", flush=True)
        loop = None if args.skip_loop else run_loop(corpus, Path(tmp) / "loop", args.loop_nice)
        report(corpus, daemon, loop)


if __name__ == "__main__":
    main()
