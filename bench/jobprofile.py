"""Where one job's seconds go: corpus drops converted in this process as a warm worker converts them, profiled.

Each drop (tests/zoo.py: fp16 model + sidecar, int8 folder with calibration jpgs) is claimed as the daemon claims
it and run through convert_job() once to warm the process (imports, the toolkit's first session), then again under
pyinstrument (when installed: `pip install pyinstrument`). Prints the job's own timings (result.json's "timings")
and the wall seconds of the profiled run split into phases by the function they were spent in.

With --trained the models are bench/accuracy.py's trained networks (nudenet, ppocr_det, ppocr_rec, ppocr_cls),
dropped as that bench drops them (int8: a folder of 12 real photos; fp16: model + sidecar, no samples).

Usage: .venv/bin/python bench/jobprofile.py [--models resnet18,yolov8n] [--modes fp16,int8] [--trained]
                                            [--html DIR] [--text]
  (the corpus is exported once into $RKNN_BENCH_ZOO_CACHE, default /tmp/rknn-dropbox-zoo; the trained networks
  into $RKNN_BENCH_TRAINED_CACHE, default /tmp/rknn-dropbox-trained)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # tests/zoo.py, not bench/zoo.py
import zoo  # noqa: E402

# phase -> the functions whose time is that phase (the innermost listed one wins)
PHASES = {
    "inspect bundle (hash, ONNX check)": ("inspect_bundle",),
    "prepare (shapes, YOLO layout)": ("prepare",),
    "samples + reference facts": ("prepare_reference",),
    "toolkit config/load": ("load_onnx", "config"),
    "toolkit build": ("build",),
    "toolkit export": ("export_rknn",),
    "simulator init_runtime": ("init_runtime",),
    "simulator inference": ("inference",),
    "reference onnxruntime": ("output",),
    "task checks + verdict": ("_verdict", "_output_rows"),
    "release": ("release", "_release"),
    "describe/hash .rknn, predict.py": ("describe_rknn", "sha256_file", "_write_predict_script"),
}


def stage(drop: Path, tmp: Path) -> tuple[Any, str]:
    from rknn_dropbox.intake.claims import claim_bundle
    inbox = tmp / "inbox"
    inbox.mkdir(parents=True)
    entries = [p.name for p in drop.parent.iterdir() if p.name == drop.name or p.name.startswith(drop.name + ".")]
    for e in entries:
        os.link(drop.parent / e, inbox / e) if (drop.parent / e).is_file() else \
            __import__("shutil").copytree(drop.parent / e, inbox / e)
    job = claim_bundle(inbox, tmp / "work", drop.name, entries, "folder" if drop.is_dir() else "file")
    assert job is not None
    return job, drop.name


def run_job(drop: Path, tmp: Path) -> tuple[float, dict[str, Any]]:
    from rknn_dropbox.convert.job import JobSettings, convert_job
    from rknn_dropbox.options import ConvertOptions
    job, name = stage(drop, tmp)
    started = time.monotonic()
    result = convert_job(job, name, ConvertOptions(), lambda s, p: None, JobSettings())
    return time.monotonic() - started, result.extra


def phases(session: Any) -> dict[str, float]:
    """Seconds per phase: each frame's own time goes to the innermost enclosing frame named in PHASES."""
    names = {fn: phase for phase, fns in PHASES.items() for fn in fns}
    out: dict[str, float] = {}

    def walk(frame: Any, phase: str) -> None:
        here = names.get(frame.function, phase)
        child_time = sum(c.time for c in frame.children)
        out[here] = out.get(here, 0.0) + max(0.0, frame.time - child_time)
        for c in frame.children:
            walk(c, here)
    walk(session.root_frame(), "other (imports, orchestration, logs)")
    return out


def write_drops(args: argparse.Namespace, drops: Path) -> list[str]:
    """The drops to profile, in staging folder `drops`; their names."""
    modes = tuple(m for m in args.modes.split(",") if m)
    names = [m for m in args.models.split(",") if m]
    if not args.trained:
        corpus = zoo.build_corpus(Path(os.environ.get("RKNN_BENCH_ZOO_CACHE", "/tmp/rknn-dropbox-zoo")), names)
        return zoo.write_drops(corpus, drops, modes)
    sys.path.append(str(REPO / "bench"))
    import accuracy
    cache = Path(os.environ.get("RKNN_BENCH_TRAINED_CACHE", "/tmp/rknn-dropbox-trained"))
    drops.mkdir(parents=True)
    return [accuracy.write_drop(m, mode, "verify", drops) for m in accuracy.models(cache, names, drops.parent)
            for mode in modes]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet18,yolov8n")
    ap.add_argument("--modes", default="fp16,int8")
    ap.add_argument("--html", type=Path, help="write each profile as HTML here")
    ap.add_argument("--text", action="store_true", help="print each profile's call tree too")
    ap.add_argument("--trained", action="store_true", help="bench/accuracy.py's trained networks")
    args = ap.parse_args()
    try:
        from pyinstrument import Profiler
    except ImportError:
        Profiler = None  # type: ignore[assignment,misc]
    with tempfile.TemporaryDirectory(prefix="rknn-jobprofile-") as tmp:
        drops = Path(tmp) / "drops"
        names = write_drops(args, drops)
        for i, name in enumerate(names):
            warm, _ = run_job(drops / name, Path(tmp) / f"warm{i}")
            profiler = Profiler(interval=0.005) if Profiler else None
            if profiler:
                profiler.start()
            wall, extra = run_job(drops / name, Path(tmp) / f"run{i}")
            print(f"\n{name}: first run {warm:.2f} s, profiled run {wall:.2f} s; job timings {extra.get('timings')}")
            ver = extra.get("verification") or {}
            print("  verification: " + ", ".join(f"{p}: {v.get('status')} ({v.get('input', '')[:60]})"
                                                 for p, v in ver.items()))
            if profiler:
                session = profiler.stop()
                for phase, secs in sorted(phases(session).items(), key=lambda kv: -kv[1]):
                    print(f"  {phase:<40}{secs:7.2f} s")
                if args.text:
                    print(profiler.output_text(color=False, short_mode=False))
                if args.html:
                    args.html.mkdir(parents=True, exist_ok=True)
                    (args.html / f"{name}.html").write_text(profiler.output_html())
    return 0


if __name__ == "__main__":
    sys.exit(main())
