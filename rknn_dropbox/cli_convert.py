"""The command line's `convert`: models converted once in this process (or a child holding another toolkit
version), with the converter code and claim the daemon's workers use."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loguru import logger

from rknn_dropbox.formats import PAIR_EXTS
from rknn_dropbox.intake.scanner import split_name
from rknn_dropbox.logsetup import setup_logging


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert once, in this process, with the same converter code the workers use."""
    from rknn_dropbox.cli import _load
    from rknn_dropbox.options import parse_convert_options
    cfg = _load(args)
    setup_logging(cfg.log_level)
    defaults = cfg.convert
    if args.target:
        defaults = parse_convert_options({"target_platform": args.target.split(",")}, "--target", base=defaults)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for model in args.models:
        src = Path(model)
        if not src.exists():
            logger.error("{}: no such file", src)
            failures += 1
            continue
        with tempfile.TemporaryDirectory(prefix="rknn-dropbox-") as tmp:
            failures += _convert_one(args, cfg, defaults, src, Path(tmp), out_dir)
    return 1 if failures else 0


def _stage_bundle(src: Path, tmp: Path) -> tuple[Any, str]:
    """The model (with its partners and sidecar) claimed as a job in `tmp`, as the daemon would; and its name."""
    from rknn_dropbox.intake.claims import claim_bundle
    name = src.name if src.is_dir() else split_name(src.name)[0]
    staging = tmp / "inbox"
    staging.mkdir()
    entries = [src.name, *(partner.name for partner in _partners(src))]
    for entry in entries:
        s = src.parent / entry
        (shutil.copytree if s.is_dir() else shutil.copy2)(s, staging / entry)
    job = claim_bundle(staging, tmp / "work", name, entries, "file")
    assert job is not None
    return job, name


def _convert_one(args: argparse.Namespace, cfg: Any, defaults: Any, src: Path, tmp: Path, out_dir: Path) -> int:
    """One model converted into out_dir (in a child process of another toolkit version when it needs one); 1 if
    it failed."""
    from rknn_dropbox.convert.job import ConversionError, JobSettings, convert_job
    from rknn_dropbox.toolkits import ToolkitMismatch, fallback_exhausted, next_fallback
    job, name = _stage_bundle(src, tmp)
    crashed = json.loads(args.crashed) if args.crashed else []
    try:
        result = convert_job(job, name, defaults, lambda stage, pct: None,
                             JobSettings(default_toolkit=cfg.toolkits.default, toolkit=args.toolkit,
                                         crashed=tuple(crashed)))
    except ToolkitMismatch as exc:  # this process holds another toolkit: convert in a child of that one
        return _convert_in_child(args, src, exc.wanted.sys_path_entry())
    except ConversionError as exc:
        if exc.crash is not None:
            toolkit, crashed = next_fallback(exc.crash, crashed)
            if toolkit is not None:  # another installed version may build it: a child of that one tries
                logger.warning("{}: {}; trying rknn-toolkit2 {}", src.name, exc.error, toolkit.version)
                return _convert_in_child(args, src, toolkit.sys_path_entry(), toolkit.version, crashed)
            exc.error = fallback_exhausted(exc.error, crashed)
        logger.error("{}: {}{}", src.name, exc.error, f" (hint: {exc.hint})" if exc.hint else "")
        if job.log.exists():
            shutil.copy2(job.log, out_dir / f"{name}.conversion.log")
        return 1
    for target in result.targets:
        if target.get("ok"):
            shutil.copy2(job.output / target["file"], out_dir / target["file"])
            logger.success("{} -> {}", src.name, out_dir / target["file"])
        else:
            logger.error("{} for {}: {}", src.name, target["platform"], target["error"])
    if (job.output / "predict.py").exists():  # the board-side script, named after the job beside its model
        shutil.copy2(job.output / "predict.py", out_dir / f"{name}.predict.py")
    (out_dir / f"{name}.result.json").write_text(json.dumps(asdict(result), indent=2, default=str))
    return 0


_CHILD = "import sys; sys.path.insert(0, sys.argv[1]) if sys.argv[1] else None; " \
         "from rknn_dropbox.cli import main; sys.exit(main(sys.argv[2:]))"


def _convert_in_child(args: argparse.Namespace, model: Path, toolkit_folder: str | None,
                      toolkit: str | None = None, crashed: list[dict[str, str]] | None = None) -> int:
    """`convert` one model in a fresh interpreter whose sys.path starts with the toolkit it needs; 1 on failure."""
    argv = ["convert", str(model.absolute()), "-o", str(Path(args.output).absolute())]
    toolkit = toolkit or args.toolkit
    if toolkit:
        argv += ["--toolkit", toolkit]
    if crashed:
        argv += ["--crashed", json.dumps(crashed)]
    from rknn_dropbox.cli import _find_config
    config = _find_config(args.config)
    if config is not None:
        argv += ["--config", str(config.absolute())]
    if args.target:
        argv += ["--target", args.target]
    if getattr(args, "debug", False):
        argv.append("--debug")
    return 1 if subprocess.run([sys.executable, "-c", _CHILD, toolkit_folder or "", *argv]).returncode else 0


def _partners(src: Path) -> list[Path]:
    """Files that belong with `src` in a bundle: its sidecar and the other half of a Darknet/Caffe pair."""
    if src.is_dir():
        return []
    stem, ext = split_name(src.name)
    wanted = [".yaml", ".yml"] + ([PAIR_EXTS[ext][0]] if ext in PAIR_EXTS else [])
    return [src.parent / (stem + e) for e in wanted if (src.parent / (stem + e)).is_file()]
