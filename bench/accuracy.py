"""Accuracy on the real-architecture corpus, int8: how many models pass verify_min_cosine (0.98) on real samples
before and after repair, the time repair adds, and what verification costs (share of job time, peak RSS).

Every model is converted as a user drops it (a folder: model.onnx, config.yaml with its mean/std, 8 photo-like
calibration jpgs in dataset.txt, 4 held-out ones as its verify_dataset) with `rknn-dropbox convert`, one fresh
process per run, three times: `verify: false` (the baseline), verification with `accuracy_repair: off` (what
verification costs: time and peak RSS) and the defaults (verification + repair: what repair adds, "repair x").
Prints one row per model and the summary against the goals (verification <= +15 % median job time, <= 1.5x peak
RSS).

Usage: .venv/bin/python bench/accuracy.py [--corpus-cache DIR] [--models a,b,...] [--platform rk3588]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import accuracygen  # noqa: E402

MIN_COSINE = 0.98


def corpus(cache: Path, names: list[str] | None) -> dict[str, tuple[Path, list[int], list[float], list[float]]]:
    """name -> (onnx, NCHW input shape, mean, std): the zoo's real architectures plus the outlier-channel net."""
    out: dict[str, tuple[Path, list[int], list[float], list[float]]] = {}
    try:
        import zoo
        built = zoo.build_corpus(cache) if not names else zoo.build_corpus(cache, [n for n in names if n in
                                                                                   zoo.RECIPES or n in
                                                                                   zoo.EXTRA_RECIPES])
        for name, info in built.items():
            if info.expect != "data-dependent":
                out[name] = (info.path, list(info.input_shape), info.mean, info.std)
    except ImportError:
        print("tests/zoo.py is not here: only the built-in nets")
    outlier = accuracygen.write_outlier_channel_net(cache / "outlier_channel.onnx", size=64)
    out["outlier_channel"] = (outlier, [1, 3, 64, 64], [0.0, 0.0, 0.0], [255.0, 255.0, 255.0])
    if not names or "conv_stack" in names:  # the issue's heavy case: 8 x 256-channel 3x3 convs at 224x224
        stack = accuracygen.write_conv_stack(cache / "conv_stack.onnx")
        out["conv_stack"] = (stack, [1, 3, 224, 224], [0.0, 0.0, 0.0], [255.0, 255.0, 255.0])
    return {k: v for k, v in out.items() if not names or k in names}


def _images(folder: Path, shape: list[int], seeds: range, prefix: str) -> list[Path]:
    """Photo-like jpgs at the input size (tests/zoo.py's generator when it is here)."""
    try:
        import cv2
        import zoo
    except ImportError:
        return accuracygen.write_natural_images(folder, n=len(seeds), size=shape[-1], seed=seeds[0], prefix=prefix)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in seeds:
        out.append(folder / f"{prefix}_{seed}.jpg")
        cv2.imwrite(str(out[-1]), zoo.natural_image(seed, shape[-2], shape[-1])[..., ::-1])
    return out


def drop(folder: Path, model: Path, shape: list[int], mean: list[float], std: list[float], extra: str) -> Path:
    """The int8 folder a user drops: 8 calibration jpgs in dataset.txt, 4 held-out jpgs in verify.txt."""
    folder.mkdir(parents=True)
    shutil.copy(model, folder / "model.onnx")
    accuracygen.write_dataset(folder / "dataset.txt", _images(folder / "calib", shape, range(7, 15), "calib"))
    accuracygen.write_dataset(folder / "verify.txt", _images(folder / "heldout", shape, range(1000, 1004), "held"))
    (folder / "config.yaml").write_text(f"mean_values: {mean}\nstd_values: {std}\nverify_dataset: verify.txt\n"
                                        f"{extra}")
    return folder


def convert(folder: Path, out: Path, platform: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "rknn_dropbox", "convert", str(folder), "--target", platform,
                           "-o", str(out)], capture_output=True, text=True, cwd=REPO)
    wall = time.monotonic() - started
    result = out / f"{folder.name}.result.json"
    if not result.exists():
        return {"error": (proc.stderr or proc.stdout)[-300:]}, wall
    return json.loads(result.read_text()), wall


def row(name: str, base: dict[str, Any], checked: dict[str, Any], full: dict[str, Any], platform: str
        ) -> dict[str, Any]:
    b, c, f = base.get("extra", {}), checked.get("extra", {}), full.get("extra", {})
    acc = f.get("accuracy", {}).get(platform, {})
    v = f.get("verification", {}).get(platform, {})
    after = min((o["cosine"] if o["cosine"] is not None else -1.0 for o in v.get("outputs", [])), default=None)
    before = acc["attempts"][0]["min_cosine"] if acc.get("attempts") else after
    t = c.get("timings", {})  # verification's cost: the run with repair off
    return {"model": name, "before": before, "after": after, "status": v.get("status", full.get("error", "?")),
            "delivered": acc.get("delivered_label", "as configured"), "attempts": len(acc.get("attempts", [])),
            "worst": (acc.get("worst_layers") or [{}])[0].get("name"),
            "job_s": f.get("timings", {}).get("total"), "base_s": b.get("timings", {}).get("total"),
            "verify_s": t.get("verify", 0.0), "repair_s": f.get("timings", {}).get("repair", 0.0),
            "analysis_s": f.get("timings", {}).get("analysis", 0.0), "reference_s": t.get("reference", 0.0),
            "rss": c.get("peak_rss_mb"), "base_rss": b.get("peak_rss_mb"), "full_rss": f.get("peak_rss_mb")}


def fmt(x: Any, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def report(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'model':<22}{'before':>8}{'after':>8}  {'delivered':<28}{'base s':>7}{'job s':>7}{'sim s':>6}"
          f"{'ref s':>6}{'added':>7}{'repair s':>9}{'RSS MB':>8}{'base MB':>8}{'RSS x':>6}{'repair x':>9}  worst layer")
    shares, rss_ratios = [], []
    for r in rows:
        # what verification adds to the job (its reference runtime + simulator runs, timed inside the job),
        # against the same job with verify: false; separate runs' totals are too noisy on a shared box
        added = ((r["verify_s"] or 0) + (r["reference_s"] or 0)) / r["base_s"] if r["base_s"] else None
        ratio = r["rss"] / r["base_rss"] if r["rss"] and r["base_rss"] else None  # verification, repair off
        repair_ratio = r["full_rss"] / r["base_rss"] if r["full_rss"] and r["base_rss"] else None
        if added is not None:
            shares.append(added)
        if ratio is not None:
            rss_ratios.append(ratio)
        print(f"{r['model']:<22}{fmt(r['before']):>8}{fmt(r['after']):>8}  {r['delivered'][:27]:<28}"
              f"{fmt(r['base_s'], '.1f'):>7}{fmt(r['job_s'], '.1f'):>7}{fmt(r['verify_s'], '.2f'):>6}"
              f"{fmt(r['reference_s'], '.2f'):>6}{fmt(added is not None and 100 * added, '+.0f'):>6}%"
              f"{fmt(r['repair_s'], '.1f'):>9}{fmt(r['rss'], '.0f'):>8}{fmt(r['base_rss'], '.0f'):>8}"
              f"{fmt(ratio, '.2f'):>6}{fmt(repair_ratio, '.2f'):>9}  {r['worst'] or ''}")
    passing_before = sum(1 for r in rows if r["before"] is not None and r["before"] >= MIN_COSINE)
    passing_after = sum(1 for r in rows if r["after"] is not None and r["after"] >= MIN_COSINE)
    print(f"\npassing {MIN_COSINE} on real samples: {passing_before}/{len(rows)} as configured, "
          f"{passing_after}/{len(rows)} delivered (after repair)")
    print(f"repair added {sum(r['repair_s'] or 0 for r in rows):.1f} s in total "
          f"(+{sum(r['analysis_s'] or 0 for r in rows):.1f} s per-layer analysis)")
    if shares:
        print(f"verification (ref = reference runtime, sim = simulator, on the samples) vs the job with verify: "
              f"false: median {100 * statistics.median(shares):+.1f} % (goal <= +15 %), max {100 * max(shares):+.1f} %")
    if rss_ratios:
        print(f"peak RSS with verification (repair off) / without: median {statistics.median(rss_ratios):.2f}x, "
              f"max {max(rss_ratios):.2f}x (goal <= 1.5x)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus-cache", type=Path, default=Path(tempfile.gettempdir()) / "rknn-dropbox-zoo")
    ap.add_argument("--models", default="")
    ap.add_argument("--platform", default="rk3588")
    args = ap.parse_args()
    args.corpus_cache.mkdir(parents=True, exist_ok=True)
    models = corpus(args.corpus_cache, [m for m in args.models.split(",") if m] or None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rknn-accuracy-bench-") as tmp:
        for name, (path, shape, mean, std) in models.items():
            results = []
            for mode, extra in (("base", "verify: false\n"), ("verify", "accuracy_repair: \"off\"\n"), ("full", "")):
                folder = drop(Path(tmp) / mode / name, path, shape, mean, std, extra)
                results.append(convert(folder, Path(tmp) / mode / "out", args.platform)[0])
            rows.append(row(name, results[0], results[1], results[2], args.platform))
            print(json.dumps(rows[-1]))
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
