"""Memory admission: real networks dropped at once, memory-aware admission (workers = 2) against plain workers = 2 and
workers = 1. Prints OOM kills (goal 0), wall time of each run and the ratio to the better plain run (goal <= 1.10),
each job's peak RSS, and the peak growth per model MB this machine measured (what admission's first-time ratio
is checked against). Usage: .venv/bin/python bench/memory.py [copies per model, default 2]
"""

from __future__ import annotations

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
from rknn_dropbox.service.admission import DEFAULT_RATIO  # noqa: E402

REAL_MODELS = ("light_shufflenet", "light_inception_v2", "light_resnet50", "light_densenet121")


def corpus(folder: Path) -> list[Path]:
    """Real-architecture networks the onnx package ships (ResNet-50, DenseNet-121, Inception-v2, ShuffleNet)."""
    import onnx
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(light / f"{name}.onnx", folder / f"{name}.onnx")) for name in REAL_MODELS]


def run(models: list[Path], copies: int, root: Path, workers: int, admission: bool) -> dict:
    (root / "inbox").mkdir(parents=True)
    (root / "config.toml").write_text(
        f'inbox = "inbox"\noutbox = "outbox"\nfailed = "failed"\nstate_dir = "state"\nworkers = {workers}\n'
        f'stable_seconds = 1.0\nmemory_admission = {"true" if admission else "false"}\ncache = false\n'
        '[http]\nport = 0\n[convert]\nverify = false\n')
    proc = subprocess.Popen([sys.executable, "-m", "rknn_dropbox", "run", "--config", str(root / "config.toml")],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=open(root / "daemon.log", "wb"))
    try:
        while not (root / "state" / "daemon.json").exists():
            time.sleep(0.05)
        port = json.loads((root / "state" / "daemon.json").read_text())["port"]
        time.sleep(8)  # warm workers (the toolkit imported)
        staging = root / "inbox" / ".staging"
        staging.mkdir()
        names = []
        for c in range(copies):
            for m in models:
                name = f"{m.stem}-{c}"
                shutil.copy(m, staging / f"{name}.onnx")
                names.append(name)
        t0 = time.monotonic()
        for name in names:
            (staging / f"{name}.onnx").rename(root / "inbox" / f"{name}.onnx")
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
    oom = sum(1 for t in tasks if t["status"] == "failed" and "signal 9" in (t.get("error") or ""))
    memory = json.loads((root / "state" / "memory.json").read_text()) if (root / "state" / "memory.json").exists() \
        else {}
    return {"wall": wall, "oom": oom, "failed": sum(t["status"] == "failed" for t in tasks),
            "peaks": {t["name"]: t.get("peak_rss_mb") for t in tasks}, "memory": memory}


def main() -> None:
    copies = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    with tempfile.TemporaryDirectory(prefix="rknn-bench-memory-") as tmp:
        models = corpus(Path(tmp) / "models")
        runs = {}
        for label, workers, admission in (("admission, workers=2", 2, True), ("plain workers=2", 2, False),
                                          ("plain workers=1", 1, False)):
            runs[label] = run(models, copies, Path(tmp) / label.replace(" ", "_").replace(",", ""), workers,
                              admission)
            r = runs[label]
            print(f"{label:22s}: {r['wall']:6.1f} s, OOM kills {r['oom']}, failed {r['failed']}", flush=True)
        best_plain = min(runs["plain workers=2"]["wall"], runs["plain workers=1"]["wall"])
        print(f"admission / better plain run: {runs['admission, workers=2']['wall'] / best_plain:.2f} "
              "(goal <= 1.10)")
        exact = runs["plain workers=1"]
        base = min(p for p in exact["peaks"].values() if p) if any(exact["peaks"].values()) else 0.0
        print("peak RSS per model (workers=1), and growth per model MB over the smallest job's peak:")
        for m in models:
            mb = m.stat().st_size / 1e6
            peak = exact["peaks"].get(f"{m.stem}-0") or 0.0
            print(f"  {m.stem:22s} {mb:6.1f} MB model  peak {peak:7.0f} MB  ratio {(peak - base) / mb:5.1f}")
        print(f"first-time ratio used by admission: {DEFAULT_RATIO}; learned: "
              f"{runs['admission, workers=2']['memory'].get('ratios')} (base "
              f"{runs['admission, workers=2']['memory'].get('base_mb')} MB)")


if __name__ == "__main__":
    main()
