"""Memory admission: the real-architecture corpus dropped at once, memory-aware admission (workers = 2) against
plain workers = 2 and workers = 1. The corpus is tests/zoo.py's networks as int8 folder drops (model, mean/std,
8 calibration jpgs) plus two deeplabv3_mobilenet_v3_large at 512x512 (fp16, ~9 GB each at their peak: the jobs two
workers must not run side by side on a 24 GB box with the rest). Prints OOM kills (goal 0), wall time of each run
and the ratio to the better plain run (goal <= 1.10), each job's peak RSS, and the peak growth per model MB this
machine measured (what admission's first-time ratio is checked against).

Usage: .venv/bin/python bench/memory.py [--corpus-cache DIR] [--big N (deeplabv3 at 512 copies, default 2)]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
import zoo  # noqa: E402
from rknn_dropbox.service.admission import DEFAULT_RATIO  # noqa: E402

SMALL = ("resnet18", "mobilenet_v2", "shufflenet_v2", "lraspp_mobilenet_v3", "yolov8n")
BIG = "deeplabv3_mobilenet_v3-512"


def corpus(cache: Path, folder: Path, big: int) -> dict[str, float]:
    """The drops in `folder` (job name -> model MB): the small networks as int8 folders, `big` fp16 deeplabv3s."""
    built = zoo.build_corpus(cache, [*SMALL, BIG])
    names = zoo.write_drops({n: built[n] for n in SMALL}, folder, modes=("int8",))
    sizes = {n: built[n.removesuffix("-int8")].path.stat().st_size / 1e6 for n in names}
    info = built[BIG]
    for c in range(big):
        shutil.copy(info.path, folder / f"{BIG}-{c}.onnx")
        (folder / f"{BIG}-{c}.yaml").write_text(f"mean_values: {info.mean}\nstd_values: {info.std}\n"
                                                 "do_quantization: false\n")
        sizes[f"{BIG}-{c}"] = info.path.stat().st_size / 1e6
    return sizes


def run(drops: Path, root: Path, workers: int, admission: bool) -> dict:
    (root / "inbox").mkdir(parents=True)
    (root / "config.toml").write_text(
        f'inbox = "inbox"\noutbox = "outbox"\nfailed = "failed"\nstate_dir = "state"\nworkers = {workers}\n'
        f'stable_seconds = 1.0\nmemory_admission = {"true" if admission else "false"}\ncache = false\n'
        'timeout_seconds = 3600\n[http]\nport = 0\n[convert]\nverify = false\n')
    proc = subprocess.Popen([sys.executable, "-m", "rknn_dropbox", "run", "--config", str(root / "config.toml")],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=open(root / "daemon.log", "wb"))
    try:
        while not (root / "state" / "daemon.json").exists():
            time.sleep(0.05)
        port = json.loads((root / "state" / "daemon.json").read_text())["port"]
        time.sleep(8)  # warm workers (the toolkit imported)
        staging = root / "inbox" / ".staging"
        shutil.copytree(drops, staging)
        names = sorted({p.name.removesuffix(".yaml").removesuffix(".onnx") for p in staging.iterdir()})
        t0 = time.monotonic()
        for entry in sorted(staging.iterdir(), key=lambda p: p.suffix != ".yaml"):  # sidecars first
            entry.rename(root / "inbox" / entry.name)
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tasks?limit=1000", timeout=10) as resp:
                tasks = json.loads(resp.read())["tasks"]
            if len(tasks) == len(names) and all(t["status"] in ("completed", "failed") for t in tasks):
                break
            time.sleep(0.2)
        wall = time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(60)
    # every worker the kernel killed, whether its job then failed or was retried alone
    oom = sum(1 for line in (root / "daemon.log").read_text(errors="replace").splitlines()
              if "died holding job" in line and "signal 9" in line)
    memory = json.loads((root / "state" / "memory.json").read_text()) if (root / "state" / "memory.json").exists() \
        else {}
    return {"wall": wall, "oom": oom, "failed": sum(t["status"] == "failed" for t in tasks),
            "peaks": {t["name"]: t.get("peak_rss_mb") for t in tasks}, "memory": memory}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus-cache", type=Path, default=Path(tempfile.gettempdir()) / "rknn-dropbox-zoo")
    ap.add_argument("--big", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rknn-bench-memory-") as tmp:
        sizes = corpus(args.corpus_cache, Path(tmp) / "drops", args.big)
        runs = {}
        # admission runs first and again last: the first run of a process tree pays for cold caches
        for label, workers, admission in (("admission, workers=2", 2, True), ("plain workers=2", 2, False),
                                          ("plain workers=1", 1, False), ("admission again", 2, True)):
            runs[label] = run(Path(tmp) / "drops", Path(tmp) / label.replace(" ", "_").replace(",", ""), workers,
                              admission)
            r = runs[label]
            print(f"{label:22s}: {r['wall']:6.1f} s, OOM kills {r['oom']}, failed {r['failed']}", flush=True)
        best_plain = min(runs["plain workers=2"]["wall"], runs["plain workers=1"]["wall"])
        admitted = (runs["admission, workers=2"]["wall"] + runs["admission again"]["wall"]) / 2
        print(f"admission (mean of its two runs) / better plain run: {admitted / best_plain:.2f} (goal <= 1.10)")
        exact = runs["plain workers=1"]
        base = runs["admission, workers=2"]["memory"].get("base_mb") or 0.0
        print(f"peak RSS per job (workers=1), and growth per model MB over a worker's idle size ({base:.0f} MB):")
        for name, mb in sizes.items():
            peak = exact["peaks"].get(name) or 0.0
            print(f"  {name:30s} {mb:6.1f} MB model  peak {peak:7.0f} MB  ratio {(peak - base) / mb:6.1f}")
        print(f"first-time ratio used by admission: {DEFAULT_RATIO}; learned: "
              f"{runs['admission, workers=2']['memory'].get('ratios')}")


if __name__ == "__main__":
    main()
