"""Throughput: 20 small ONNX models dropped at once into a daemon with 2 warm workers, against two baselines.

(a) a sequential loop running `rknn-dropbox convert` as one process per model (what a convert.py per model costs)
(b) an in-process loop over the toolkit API (the floor: no process start, no toolkit import per model)
Prints wall times and the ratios, and the daemon process's own RSS. Usage: .venv/bin/python bench/throughput.py [N]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import modelgen  # noqa: E402

STABLE_SECONDS = 1.0
# (b) only builds and exports; the daemon's default simulator check (verify) is extra work per job, so the
# like-for-like run turns it off. RKNN_BENCH_VERIFY=1 measures the default instead.
VERIFY = os.environ.get("RKNN_BENCH_VERIFY") == "1"


def make_models(folder: Path, n: int) -> list[Path]:
    return [modelgen.write_onnx_variant(folder / f"m{i:02d}.onnx", seed=i) for i in range(n)]


REAL_MODELS = ("light_shufflenet", "light_inception_v2", "light_resnet50", "light_densenet121")


def real_models(folder: Path) -> list[Path]:
    """Real-size networks the onnx package ships (2-6 s each to convert): where conversion time dominates."""
    import onnx
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(light / f"{name}.onnx", folder / f"{name}.onnx")) for name in REAL_MODELS]


def run_daemon(models: list[Path], root: Path) -> tuple[float, float]:
    (root / "inbox").mkdir(parents=True)
    (root / "config.toml").write_text(
        f'inbox = "inbox"\noutbox = "outbox"\nfailed = "failed"\nstate_dir = "state"\nworkers = 2\n'
        f'stable_seconds = {STABLE_SECONDS}\n[http]\nport = 0\n[convert]\nverify = {"true" if VERIFY else "false"}\n')
    proc = subprocess.Popen([sys.executable, "-m", "rknn_dropbox", "run", "--config", str(root / "config.toml")],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=open(root / "daemon.log", "wb"))
    try:
        while not (root / "state" / "daemon.json").exists():
            time.sleep(0.05)
        time.sleep(3)  # let both workers finish importing the toolkit: we measure warm workers
        staging = root / "inbox" / ".staging"
        staging.mkdir()
        for m in models:
            shutil.copy(m, staging / m.name)
        start = time.monotonic()
        for m in models:
            os.rename(staging / m.name, root / "inbox" / m.name)  # all appear at once, complete
        rss_peak = 0.0
        daemon = psutil.Process(proc.pid)
        while len([p for p in (root / "outbox").glob("*/result.json")]) + \
                len(list((root / "failed").glob("*/error.json"))) < len(models):
            rss_peak = max(rss_peak, daemon.memory_info().rss)
            time.sleep(0.05)
        elapsed = time.monotonic() - start
        failed = list((root / "failed").glob("*/error.json"))
        assert not failed, json.loads(failed[0].read_text())
        return elapsed, rss_peak / 1e6
    finally:
        proc.terminate()
        proc.wait(60)


def run_cli_per_model(models: list[Path], out: Path) -> float:
    start = time.monotonic()
    for m in models:
        subprocess.run([sys.executable, "-m", "rknn_dropbox", "convert", str(m), "-o", str(out)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def run_in_process(models: list[Path], out: Path) -> float:
    from rknn.api import RKNN
    out.mkdir(parents=True, exist_ok=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1), os.dup(2)
    start = time.monotonic()
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        for m in models:
            rknn = RKNN(verbose=False)
            rknn.config(target_platform="rk3588")
            assert rknn.load_onnx(model=str(m)) == 0
            assert rknn.build(do_quantization=False) == 0
            assert rknn.export_rknn(str(out / (m.stem + ".rknn"))) == 0
            rknn.release()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
    return time.monotonic() - start


def measure(label: str, make: Callable[[Path], list[Path]]) -> None:
    with tempfile.TemporaryDirectory(prefix="rknn-bench-") as tmp:
        tmp_path = Path(tmp)
        models = make(tmp_path / "models")
        t_daemon, rss = run_daemon(models, tmp_path / "daemon")
        t_cli = run_cli_per_model(models, tmp_path / "cli")
        t_api = run_in_process(models, tmp_path / "api")
    print(f"\nmodels: {label}, target rk3588 fp16; daemon: 2 workers, stable_seconds={STABLE_SECONDS}, "
          f"verify={VERIFY}")
    print(f"daemon, drop to all done:            {t_daemon:7.2f} s")
    print(f"(a) rknn-dropbox convert per model:  {t_cli:7.2f} s   ratio (a)/daemon = {t_cli / t_daemon:5.1f}x "
          "(target >= 5x)")
    print(f"(b) in-process toolkit loop:         {t_api:7.2f} s   daemon - stability window = "
          f"{t_daemon - STABLE_SECONDS:5.2f} s, ratio to (b) = {(t_daemon - STABLE_SECONDS) / t_api:4.2f} "
          "(target <= 1.10)")
    print(f"daemon process peak RSS:             {rss:7.1f} MB (target < 80 MB)")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    measure(f"{n} tiny generated ONNX (conversion ~15 ms: per-job overhead dominates)",
            lambda folder: make_models(folder, n))
    measure(f"{len(REAL_MODELS)} real networks ({', '.join(REAL_MODELS)})", real_models)


if __name__ == "__main__":
    main()
