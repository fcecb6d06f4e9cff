"""Accuracy on trained networks and real photos (issue 17): does "verified" mean the model still does its job?

Models: the trained networks of tests/trained.py (nudenet's YOLOv8n detector, PP-OCRv4 text detector, CTC recogniser
and direction classifier) and the real-architecture corpus of tests/zoo.py (random weights). Each is dropped into a
real daemon (workers = 1) as a user would: int8 is a folder with the model, config.yaml (mean/std, input size) and
12 real photos in dataset.txt (the OCR recogniser and classifier: text-line crops); fp16 is the model and its sidecar,
no dataset. Every drop three times: `verify: false` (the baseline), `accuracy_repair: "off"` (what verification and
its task checks cost) and the defaults (the verdict, repair, the dtype delivered).

Then a held-out-photo check written here (bench/heldout.py, not the product's checks): the first build's and the
delivered build's settings rebuilt with the toolkit, simulator against onnxruntime on 4 photos the job never saw,
compared by task. Prints per job the product's verdict and metric (first build, delivered), the held-out answer,
the dtype delivered, verification + repair seconds and peak RSS; then false "passed", false "below threshold",
jobs lost, and verification's share of the median job and its peak RSS against the same job with verify: false.

Usage: .venv/bin/python bench/accuracy.py [--quick] [--models a,b] [--modes int8,fp16] [--cache DIR]
                                          [--platform rk3588] [--workers 1] [--no-heldout] [--json F] [--keep DIR]
  --quick: nudenet and ppocr_cls only (a few minutes). Caches: trained wheels and the corpus under --cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
import trained  # noqa: E402
from heldout import CheckSpec  # noqa: E402

QUICK = ("nudenet", "ppocr_cls")
HELD_OUT = ("bus", "zidane", "grace_hopper", "motorcycle_right")  # people and objects, never calibrated on
CALIBRATION = 12
VARIANTS = {"base": "verify: false\n", "verify": 'accuracy_repair: "off"\n', "full": ""}
JOB_TIMEOUT = 3600.0


@dataclass(frozen=True)
class BenchModel:
    """One model as the bench drops it: its file, input shape, preprocessing, task, calibration and held-out photos."""
    name: str
    path: Path
    shape: list[int]
    mean: list[float]
    std: list[float]
    kind: str
    calibration: list[Path]
    held_out: list[Path]


def _resized(sources: list[Path], folder: Path, shape: list[int], prefix: str) -> list[Path]:
    """The photos at the input's size as PNGs (the job and the held-out check read the same pixels)."""
    import cv2
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(sources):
        out.append(folder / f"{prefix}{i:02d}_{src.stem}.png")
        cv2.imwrite(str(out[-1]), cv2.resize(cv2.imread(str(src)), (shape[3], shape[2])))
    return out


def _page_crops(photos: dict[str, Path], folder: Path) -> list[Path]:
    """The text detector's held-out photos: skimage's printed page whole, its left and right halves, the bus (its
    signs); none of them in the calibration set (scene photos)."""
    import cv2
    folder.mkdir(parents=True, exist_ok=True)
    page = cv2.imread(str(photos["page"]))
    half = page.shape[1] // 2
    crops = {"page_left": page[:, :half], "page_right": page[:, half:]}
    for name, img in crops.items():
        cv2.imwrite(str(folder / f"{name}.png"), img)
    return [photos["page"], folder / "page_left.png", folder / "page_right.png", photos["bus"]]


def _photo_sets(kind: str, photos: dict[str, Path], cache: Path, work: Path) -> tuple[list[Path], list[Path]]:
    """(calibration, held-out): for the recogniser and classifier text-line crops (12 to calibrate, 4 other crops
    held out: upright lines for the recogniser, both orientations for the classifier), photos for the rest."""
    if kind in ("text-recognise", "direction"):
        calib = trained.text_lines(cache, work / "lines-calibration", CALIBRATION)
        other = trained.text_lines(cache, work / "lines-held-out", 8)
        return calib, [other[i] for i in ((0, 2, 4, 6) if kind == "text-recognise" else (2, 3, 4, 5))]
    calib = [photos[n] for n in trained.SCENE_PHOTOS if n not in HELD_OUT][:CALIBRATION]
    return calib, _page_crops(photos, work / "page") if kind == "text-detect" else [photos[n] for n in HELD_OUT]


def models(cache: Path, names: list[str] | None, work: Path) -> list[BenchModel]:
    """The trained networks, then the corpus (when tests/zoo.py can build it), filtered by name."""
    photos = trained.real_photos(cache)
    found = [(m.name, m.path, list(m.input_shape), m.mean, m.std, m.kind)
             for m in trained.trained_models(cache).values()]
    wanted_zoo = None if names is None else [n for n in names if n not in {f[0] for f in found}]
    if wanted_zoo != []:
        try:
            import zoo
            picked = [n for n in (wanted_zoo or zoo.DEFAULT_NAMES) if zoo.recipe(n).expect != "data-dependent"]
            found += [(n, i.path, list(i.input_shape), i.mean, i.std, i.kind)
                      for n, i in zoo.build_corpus(cache / "zoo", picked).items()]
        except (ImportError, RuntimeError) as exc:
            print(f"the corpus is left out: {str(exc)[:200]}")
    out = []
    for name, path, shape, mean, std, kind in found:
        if names is None or name in names:
            calib, held = _photo_sets(kind, photos, cache, work)
            folder = work / "photos" / name
            calib = _resized(calib, folder, shape, "calib")
            (folder / "dataset.txt").write_text("".join(f"{p}\n" for p in calib))  # the held-out check's rebuild
            out.append(BenchModel(name, path, shape, mean, std, kind, calib, _resized(held, folder, shape, "held")))
    return out


def sidecar(m: BenchModel) -> str:
    return (f"mean_values: [{', '.join(map(str, m.mean))}]\nstd_values: [{', '.join(map(str, m.std))}]\n"
            f"input_size_list: [[{', '.join(map(str, m.shape))}]]\n")


def write_drop(m: BenchModel, mode: str, variant: str, staging: Path) -> str:
    """One drop in staging/: int8 a folder (model, config.yaml, photos, dataset.txt), fp16 model + sidecar."""
    name = f"{m.name}-{mode}-{variant}"
    if mode == "fp16":
        shutil.copy(m.path, staging / f"{name}.onnx")
        (staging / f"{name}.yaml").write_text(sidecar(m) + "do_quantization: false\n" + VARIANTS[variant])
        return name
    folder = staging / name
    (folder / "calib").mkdir(parents=True)
    shutil.copy(m.path, folder / "model.onnx")
    for photo in m.calibration:
        shutil.copy(photo, folder / "calib" / photo.name)
    (folder / "dataset.txt").write_text("".join(f"calib/{p.name}\n" for p in m.calibration))
    (folder / "config.yaml").write_text(sidecar(m) + VARIANTS[variant])
    return name


def run_daemon(root: Path, staging: Path, names: list[str], workers: int) -> dict[str, dict[str, Any]]:
    """All drops into a real daemon at once; each job's result.json (or error.json, with "failed": true)."""
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text(
        'inbox = "inbox"\noutbox = "outbox"\nfailed = "failed"\nstate_dir = "state"\n'
        f"workers = {workers}\nstable_seconds = 1.0\ntimeout_seconds = {JOB_TIMEOUT:.0f}\n[http]\nport = 0\n")
    proc = subprocess.Popen([sys.executable, "-m", "rknn_dropbox", "run", "--config", str(root / "config.toml")],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=open(root / "daemon.log", "wb"),
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    try:
        while not (root / "state" / "daemon.json").exists():
            assert proc.poll() is None, (root / "daemon.log").read_text()[-2000:]
            time.sleep(0.1)
        for entry in sorted(staging.iterdir()):
            os.rename(entry, root / "inbox" / entry.name)
        deadline = time.monotonic() + JOB_TIMEOUT * len(names)
        while sum((root / d / n).is_dir() for d in ("outbox", "failed") for n in names) < len(names):
            assert time.monotonic() < deadline, "the daemon did not finish the bench's jobs"
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(120)
    done = {}
    for n in names:
        ok = root / "outbox" / n / "result.json"
        done[n] = json.loads(ok.read_text()) if ok.exists() else \
            {"failed": True, **json.loads((root / "failed" / n / "error.json").read_text())}
    return done


def _target(result: dict[str, Any], platform: str) -> dict[str, Any]:
    return next((t for t in result.get("targets") or [] if t.get("platform") == platform), {})


def _attempts(result: dict[str, Any], platform: str) -> list[dict[str, Any]]:
    acc = (result.get("accuracy") or {}).get(platform) or {}
    return [a for a in acc.get("attempts") or [] if isinstance(a, dict)]


def _delivered(result: dict[str, Any], platform: str) -> int:
    delivered = ((result.get("accuracy") or {}).get(platform) or {}).get("delivered", 0)
    return delivered if isinstance(delivered, int) and not isinstance(delivered, bool) else 0


def check_spec(m: BenchModel, result: dict[str, Any], settings: dict[str, Any], platform: str) -> CheckSpec:
    """The held-out check of one build of this job: its settings, the job's effective options and workarounds."""
    options = result.get("config") or {}
    config = {k: options[k] for k in ("quantized_dtype", "quantized_algorithm", "quantized_method",
                                      "optimization_level") if options.get(k) is not None}
    rules = list(options.get("disable_rules") or [])
    for w in result.get("workarounds") or []:
        rules += [r for r in w.get("disable_rules") or [] if r not in rules]
    if rules:
        config["disable_rules"] = rules
    import onnx
    graph = onnx.load(str(m.path), load_external_data=False).graph
    onnx_outputs = [o.name for o in graph.output]
    tensors = {name for node in graph.node for name in node.output}
    delivered = [o.get("name") for o in (_target(result, platform).get("rknn") or {}).get("outputs") or []]
    # a head delivered split (load_onnx(outputs=[...]): the Concat's inputs) is rebuilt the same way; the split
    # layout rknn-dropbox makes itself names each output's tensor in the stock graph (outputs_layout: source)
    layout = result.get("outputs_layout") or {}
    sources = [o.get("source") for o in layout.get("outputs") or [] if isinstance(o, dict)]
    if layout.get("layout") == "split" and sources and all(src in tensors for src in sources):
        delivered = sources
    outputs = delivered if delivered and delivered != onnx_outputs and set(delivered) <= tensors else None
    note = "" if outputs or not delivered or delivered == onnx_outputs else \
        f"the delivered outputs ({', '.join(map(str, delivered))[:60]}) are no tensors of the ONNX: its own rebuilt"
    return CheckSpec(str(m.path), m.kind, m.shape, m.mean, m.std, platform, config, settings, outputs,
                     str(m.calibration[0].parent / "dataset.txt"), [str(p) for p in m.held_out], note)


def first_settings(result: dict[str, Any], platform: str) -> dict[str, Any]:
    attempts = _attempts(result, platform)
    if attempts and isinstance(attempts[0].get("settings"), dict):
        return attempts[0]["settings"]
    return {"do_quantization": bool(result.get("quantized"))}


def delivered_settings(result: dict[str, Any], platform: str) -> dict[str, Any]:
    given = _target(result, platform).get("build_settings")
    return given if isinstance(given, dict) and given else first_settings(result, platform)


def held_out(spec: CheckSpec, work: Path) -> dict[str, Any]:
    """bench/heldout.py in a child process: a toolkit crash is this row's error, not the bench's end."""
    path = work / f"spec-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(asdict(spec)))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "heldout.py"), str(path)], capture_output=True,
                          text=True, cwd=work, timeout=JOB_TIMEOUT)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    try:
        return {**json.loads(last), **({"note": spec.note} if spec.note else {})}
    except json.JSONDecodeError:
        return {"good": None, "error": f"held-out check died ({proc.returncode}): {proc.stderr[-300:]}"}


def product_verdict(result: dict[str, Any], platform: str) -> tuple[str, str]:
    """(status, words) the product gave: passed / below_threshold / warning / ..., its verdict's sentence."""
    if result.get("failed"):
        return "failed", str(result.get("error", ""))[:80]
    block = (result.get("verification") or {}).get(platform) or {}
    verdict = block.get("verdict") if isinstance(block.get("verdict"), dict) else {}
    cosine = min((o.get("cosine") for o in block.get("outputs") or [] if isinstance(o.get("cosine"), float)),
                 default=None)
    words = verdict.get("summary") or (f"cosine {cosine:.4f}" if cosine is not None else block.get("reason", ""))
    metric = f" [{verdict['metric']}]" if verdict.get("metric") else ""
    return str(block.get("status", "-")), f"{words}{metric}" + (" (synthetic)" if block.get("synthetic") else "")


def delivered_dtype(result: dict[str, Any], platform: str) -> str:
    settings = delivered_settings(result, platform)
    if result.get("failed"):
        return "-"
    if not settings.get("do_quantization", result.get("quantized")):
        return "fp16"
    dtype = settings.get("quantized_dtype") or (result.get("quantization") or {}).get("dtype") or "w8a8"
    return str(dtype) + (" hybrid" if settings.get("auto_hybrid") or settings.get("custom_hybrid") else "")


def _seconds(result: dict[str, Any], *keys: str) -> float:
    timings = result.get("timings") or {}
    return round(sum(float(timings.get(k) or 0.0) for k in keys), 2)


def job_row(m: BenchModel, mode: str, runs: dict[str, dict[str, Any]], platform: str, work: Path,
            check: bool) -> dict[str, Any]:
    """One job: the product's verdict (first build: the repair-off run; delivered: the defaults), the held-out
    answer for each, dtype, verification and repair seconds, peak RSS of the three runs."""
    base, verify, full = runs["base"], runs["verify"], runs["full"]
    repaired = not full.get("failed") and _delivered(full, platform) != 0
    row: dict[str, Any] = {
        "model": m.name, "mode": mode, "first": product_verdict(verify, platform),
        "delivered": product_verdict(full, platform), "dtype": delivered_dtype(full, platform), "repaired": repaired,
        "lost": full.get("error") if full.get("failed") else None,
        "verify_s": _seconds(verify, "verify", "reference", "checks"), "repair_s": _seconds(full, "repair", "analysis"),
        "base_s": _seconds(base, "total"), "verify_total_s": _seconds(verify, "total"),
        "full_s": _seconds(full, "total"),
        "base_rss": base.get("peak_rss_mb"), "rss": verify.get("peak_rss_mb"), "full_rss": full.get("peak_rss_mb")}
    if check and not verify.get("failed"):
        row["held_first"] = held_out(check_spec(m, verify, first_settings(verify, platform), platform), work)
    if check and repaired:
        row["held_delivered"] = held_out(check_spec(m, full, delivered_settings(full, platform), platform), work)
    return row


def _judged(row: dict[str, Any]) -> list[tuple[str, bool | None]]:
    """(product status, held-out truly good) for the first build and, when repaired, the delivered one."""
    pairs = [(row["first"][0], (row.get("held_first") or {}).get("good"))]
    if row["repaired"]:
        pairs.append((row["delivered"][0], (row.get("held_delivered") or {}).get("good")))
    return pairs


def _held_words(held: dict[str, Any] | None) -> str:
    if not held:
        return "-"
    if held.get("error"):
        return f"error: {held['error'][:40]}"
    note = " (*)" if held.get("note") else ""  # printed in full in the row's JSON
    return f"{'good' if held.get('good') else 'BROKEN'}{note}: {held.get('summary', '')}"


def fmt(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'model':<20}{'mode':<5} {'first build (product)':<44}{'held-out (bench)':<38}{'delivered':<16}"
          f"{'after repair (product)':<36}{'verif s':>8}{'repair s':>9}{'base s':>7}{'RSS MB':>7}{'base MB':>8}")
    for r in rows:
        after = f"{r['delivered'][0]}: {r['delivered'][1]}" if r["repaired"] else "(not repaired)"
        after = f"LOST: {r['lost']}" if r["lost"] else after
        if r["repaired"]:
            after += f" / {_held_words(r.get('held_delivered'))}"
        print(f"{r['model']:<20}{r['mode']:<5} {(r['first'][0] + ': ' + r['first'][1])[:43]:<44}"
              f"{_held_words(r.get('held_first'))[:37]:<38}{r['dtype'][:15]:<16}{after[:35]:<36}"
              f"{fmt(r['verify_s']):>8}{fmt(r['repair_s']):>9}{fmt(r['base_s']):>7}{fmt(r['rss'], '.0f'):>7}"
              f"{fmt(r['base_rss'], '.0f'):>8}")


def print_summary(rows: list[dict[str, Any]]) -> None:
    pairs = [p for r in rows for p in _judged(r) if p[1] is not None]
    false_passed = sum(1 for status, good in pairs if status == "passed" and not good)
    false_below = sum(1 for status, good in pairs if status == "below_threshold" and good)
    false_warning = sum(1 for status, good in pairs if status == "warning" and good)
    print(f"\nagainst the held-out check ({len(pairs)} builds judged): false \"passed\" {false_passed} (goal 0), "
          f"false \"below threshold\" {false_below} (goal 0), warnings on a good build {false_warning}")
    lost = [r for r in rows if r["lost"]]
    print(f"jobs lost: {len(lost)} (goal 0)" + "".join(f"\n  {r['model']}-{r['mode']}: {r['lost'][:120]}"
                                                      for r in lost))
    repaired = [r for r in rows if r["repaired"]]
    print(f"repaired: {len(repaired)} jobs, {sum(r['repair_s'] for r in rows):.1f} s of repair and analysis in all")
    shares = [r["verify_s"] / r["base_s"] for r in rows if r["base_s"]]
    walls = [r["verify_total_s"] / r["base_s"] - 1 for r in rows if r["base_s"] and r["verify_total_s"]]
    rss = [r["rss"] / r["base_rss"] for r in rows if r["rss"] and r["base_rss"]]
    if shares:
        print(f"verification (reference + simulator + task checks, timed in the job) vs the same job with verify: "
              f"false: median {100 * statistics.median(shares):+.1f} % (goal <= +10 %), max {100 * max(shares):+.1f} %"
              f"; wall time of the whole job: median {100 * statistics.median(walls):+.1f} %")
    if rss:
        print(f"peak RSS with verification (repair off) / without: median {statistics.median(rss):.2f}x, "
              f"max {max(rss):.2f}x (goal <= 1.2x)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--models", default="")
    ap.add_argument("--modes", default="int8,fp16")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "rknn-dropbox-trained")
    ap.add_argument("--platform", default="rk3588")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-heldout", action="store_true")
    ap.add_argument("--json", type=Path, help="write the rows here too")
    ap.add_argument("--keep", type=Path, help="work here and keep it (drops, outbox, failed, daemon.log)")
    args = ap.parse_args()
    names = list(QUICK) if args.quick else [n for n in args.models.split(",") if n] or None
    modes = [m for m in args.modes.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="rknn-accuracy-bench-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bench_models = models(args.cache, names, work)
        staging = work / "staging"
        staging.mkdir()
        jobs = {(m.name, mode, v): write_drop(m, mode, v, staging) for m in bench_models for mode in modes
                for v in VARIANTS}
        started = time.monotonic()
        results = run_daemon(work / "daemon", staging, list(jobs.values()), args.workers)
        print(f"{len(jobs)} jobs through the daemon in {time.monotonic() - started:.0f} s")
        rows = []
        for m in bench_models:
            for mode in modes:
                runs = {v: results[jobs[(m.name, mode, v)]] for v in VARIANTS}
                rows.append(job_row(m, mode, runs, args.platform, work, not args.no_heldout))
                print(json.dumps(rows[-1], default=str))
    print_rows(rows)
    print_summary(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
