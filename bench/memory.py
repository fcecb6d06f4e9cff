"""Memory admission: the real-architecture corpus dropped at once, memory-aware admission against plain fixed worker
counts. The corpus is tests/zoo.py's networks as int8 folder drops (model, mean/std, 8 calibration jpgs) plus
`--big` deeplabv3_mobilenet_v3_large at 512x512 (fp16, ~9 GB each at their peak). The default is the case admission
exists for: three of them with workers = 3 on a 24 GB box, where plain workers = 3 is OOM-killed (the kernel kills a
worker; the daemon retries its job alone) and two fit side by side.

Runs: admission (workers = W) on a fresh memory history, plain workers = W, W-1, ..., 1, and admission again with
what it learned. Prints per run the wall time, OOM kills (goal 0 with admission) and failures; the best plain run
without an OOM kill; each admission run's ratio to it (goal <= 1.10 for both); each job's peak RSS and the peak
growth per model MB this machine measured (what admission's first-time ratio is checked against).

Needs an otherwise idle machine with ~24 GB: plain workers = 3 drives it out of memory on purpose.
`--smoke`: three tiny generated ONNX models, workers = 2, no corpus (checks that the script runs; a minute or two).

Usage: .venv/bin/python bench/memory.py [--corpus-cache DIR] [--big N (default 3)] [--workers W (default 3)]
       .venv/bin/python bench/memory.py --smoke
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
RUN_TIMEOUT = 3600.0


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


def run(drops: Path, root: Path, workers: int, admission: bool, history: Path | None = None) -> dict:
    """One daemon over a copy of the drops; `history`: a memory.json to start from (what an earlier run learned)."""
    (root / "inbox").mkdir(parents=True)
    if history is not None and history.exists():
        (root / "state").mkdir()
        shutil.copy(history, root / "state" / "memory.json")
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
            if time.monotonic() - t0 > RUN_TIMEOUT:
                raise RuntimeError(f"{root.name}: not done after {RUN_TIMEOUT:.0f} s (see {root / 'daemon.log'})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tasks?limit=1000", timeout=10) as resp:
                    tasks = json.loads(resp.read())["tasks"]
            except OSError:  # a box driven out of memory (plain workers = W) answers late: ask again
                time.sleep(1.0)
                continue
            if len(tasks) == len(names) and all(t["status"] in ("completed", "failed") for t in tasks):
                break
            time.sleep(0.2)
        wall = time.monotonic() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:  # stuck swapping its workers out: the run is over either way
            proc.kill()
            proc.wait(60)
    # every worker the kernel killed, whether its job then failed or was retried alone
    oom = sum(1 for line in (root / "daemon.log").read_text(errors="replace").splitlines()
              if "died holding job" in line and "signal 9" in line)
    memory = json.loads((root / "state" / "memory.json").read_text()) if (root / "state" / "memory.json").exists() \
        else {}
    return {"wall": wall, "oom": oom, "failed": sum(t["status"] == "failed" for t in tasks),
            "peaks": {t["name"]: t.get("peak_rss_mb") for t in tasks}, "memory": memory}


def smoke_corpus(folder: Path) -> dict[str, float]:
    """Three tiny ONNX models (job name -> model MB): the script's path without the corpus or much memory."""
    import modelgen
    sizes = {}
    for seed in range(3):
        path = modelgen.write_onnx_conv(folder / f"tiny-{seed}.onnx", seed=seed)
        sizes[f"tiny-{seed}"] = path.stat().st_size / 1e6
    return sizes


def plan(workers: int) -> list[tuple[str, int, bool]]:
    """(label, workers, admission): admission first (no history) and last (learned), plain W..1 between."""
    plain = [(f"plain workers={w}", w, False) for w in range(workers, 0, -1)]
    return [(f"admission, workers={workers}", workers, True), *plain, ("admission again", workers, True)]


def report(runs: dict[str, dict], sizes: dict[str, float]) -> None:
    safe = {label: r["wall"] for label, r in runs.items() if label.startswith("plain") and r["oom"] == 0}
    if not safe:
        print("every plain run was OOM-killed: no fixed worker count to compare with")
        return
    best_label = min(safe, key=safe.get)
    print(f"best plain run without an OOM kill: {best_label} ({safe[best_label]:.1f} s)")
    for label in (k for k in runs if k.startswith("admission")):
        r = runs[label]
        print(f"  {label}: {r['wall'] / safe[best_label]:.2f} of it, OOM kills {r['oom']} (goal <= 1.10, 0)")
    exact = runs["plain workers=1"]
    first = next(r for k, r in runs.items() if k.startswith("admission,"))
    base = first["memory"].get("base_mb") or 0.0
    print(f"peak RSS per job (workers=1), and growth per model MB over a worker's idle size ({base:.0f} MB):")
    for name, mb in sizes.items():
        peak = exact["peaks"].get(name) or 0.0
        print(f"  {name:30s} {mb:6.1f} MB model  peak {peak:7.0f} MB  ratio {(peak - base) / max(mb, 0.01):6.1f}")
    print(f"first-time ratio used by admission: {DEFAULT_RATIO}; learned: {first['memory'].get('ratios')}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus-cache", type=Path, default=Path(tempfile.gettempdir()) / "rknn-dropbox-zoo")
    ap.add_argument("--big", type=int, default=3)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="three tiny models, workers=2: check that the script runs")
    args = ap.parse_args()
    workers = 2 if args.smoke else args.workers
    with tempfile.TemporaryDirectory(prefix="rknn-bench-memory-") as tmp:
        drops = Path(tmp) / "drops"
        sizes = smoke_corpus(drops) if args.smoke else corpus(args.corpus_cache, drops, args.big)
        runs, learned = {}, None
        for label, count, admission in plan(workers):
            root = Path(tmp) / label.replace(" ", "_").replace(",", "")
            runs[label] = run(drops, root, count, admission, learned if label == "admission again" else None)
            if admission and learned is None:
                learned = root / "state" / "memory.json"  # the second admission run starts from what it learned
            r = runs[label]
            print(f"{label:22s}: {r['wall']:6.1f} s, OOM kills {r['oom']}, failed {r['failed']}", flush=True)
        report(runs, sizes)


if __name__ == "__main__":
    main()
