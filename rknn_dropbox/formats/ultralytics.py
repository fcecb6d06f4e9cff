"""Ultralytics checkpoints (best.pt / yolov8n.pt): recognised by content, exported to ONNX in a child process of
the worker (the optional ultralytics package, AGPL-3.0), then converted as that ONNX."""

from __future__ import annotations

import os
import pickletools
import subprocess
import sys
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from rknn_dropbox.formats.base import Format, FormatError, ToolkitCall
from rknn_dropbox.formats.onnx import FORMAT as ONNX
from rknn_dropbox.formats.onnx_shapes import ShapePlan

MARKER = b"cultralytics.nn.tasks\n"  # the pickle's GLOBAL opcode naming an Ultralytics model class
EXPORT_OPSET = 12                   # rknn-toolkit2 2.5.0 loads opsets 12-19; the Rockchip model zoo exports 12
DEFAULT_IMGSZ = 640
EXPORT_TIMEOUT = 900
EXTRA = "the optional ultralytics package (requirements/test-models.txt pins it; AGPL-3.0)"
# run in a child of the worker: the worker itself never imports ultralytics
_EXPORT = """
import sys
try:
    from ultralytics import YOLO
except ImportError as exc:
    print(f"NO_ULTRALYTICS {exc}", flush=True)
    sys.exit(3)
path = YOLO(sys.argv[1]).export(format="onnx", imgsz=[int(sys.argv[2]), int(sys.argv[3])], opset=int(sys.argv[4]))
print(f"EXPORTED {path}", flush=True)
"""


@dataclass(frozen=True)
class CheckpointFacts:
    """What the checkpoint's pickle says, read without unpickling it."""
    model_class: str                 # DetectionModel, SegmentationModel, PoseModel, OBBModel, ...
    train_imgsz: list[int] | None    # train_args' imgsz ([h, w])


@dataclass
class ExportedPlan(ShapePlan):
    """The ONNX plan of the exported checkpoint, and the ONNX spec the build and verification use."""
    onnx_spec: Any = None
    export_note: str = ""


def _pickle_of(model: Path) -> bytes:
    with zipfile.ZipFile(model) as zf:
        name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        return zf.read(name)


def _strings_and_ints(data: bytes) -> Iterator[tuple[str, Any]]:
    """The pickle's GLOBAL names, strings (memo references resolved) and small ints, in order."""
    memo: dict[int, Any] = {}
    last: Any = None
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            last = arg
            yield "str", arg
        elif op.name in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = last
        elif op.name in ("BINGET", "LONG_BINGET") and isinstance(memo.get(arg), str):
            last = memo[arg]
            yield "str", last
        elif op.name in ("BININT", "BININT1", "BININT2"):
            last = None
            yield "int", int(arg)
        elif op.name == "GLOBAL":
            last = None
            yield "global", arg
        elif op.name != "MEMOIZE":  # protocol 4 memoizes the string just read
            last = None


def read_checkpoint(model: Path) -> CheckpointFacts:
    """The model class and the training size (train_args' imgsz), from the pickle's opcodes: nothing is executed."""
    model_class, sizes, in_train_args, after_imgsz = "", {}, False, None
    for kind, value in _strings_and_ints(_pickle_of(model)):
        if kind == "global" and value.startswith("ultralytics.nn.tasks ") and not model_class:
            model_class = value.split(" ", 1)[1]
        in_train_args = in_train_args or (kind == "str" and value == "train_args")
        if after_imgsz is not None and kind == "int":
            sizes.setdefault(after_imgsz, value)
        after_imgsz = in_train_args if kind == "str" and value == "imgsz" else None
    imgsz = sizes.get(True, sizes.get(False))
    return CheckpointFacts(model_class, [imgsz, imgsz] if imgsz else None)


def export_command(model: Path, imgsz: list[int]) -> str:
    size = imgsz[0] if imgsz[0] == imgsz[1] else f"{imgsz[0]},{imgsz[1]}"
    return f"yolo export model={model.name} format=onnx imgsz={size} opset={EXPORT_OPSET}"


def export_onnx(model: Path, imgsz: list[int], scratch: Path) -> Path:
    """The checkpoint exported by Ultralytics in a child process; FormatError naming the command without it."""
    out = scratch / "ultralytics-export"
    out.mkdir(parents=True, exist_ok=True)
    local = out / model.name
    if not local.exists():
        os.link(model, local) if model.stat().st_dev == out.stat().st_dev else local.write_bytes(model.read_bytes())
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(out / "config"), "YOLO_VERBOSE": "False"}
    proc = subprocess.run([sys.executable, "-c", _EXPORT, str(local), str(imgsz[0]), str(imgsz[1]),
                           str(EXPORT_OPSET)], cwd=out, env=env, capture_output=True, text=True,
                          timeout=EXPORT_TIMEOUT)
    print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
    done = [line[len("EXPORTED "):] for line in proc.stdout.splitlines() if line.startswith("EXPORTED ")]
    exported = out / done[-1] if done else None  # Ultralytics prints it relative to its cwd
    if proc.returncode == 0 and exported is not None and exported.exists():
        return exported
    if "NO_ULTRALYTICS" in proc.stdout:
        raise FormatError(f"{model.name} is an Ultralytics checkpoint, which needs {EXTRA} to be exported to ONNX "
                          "on this box", f"install it in the daemon's venv, or export it yourself and drop the "
                          f".onnx: `{export_command(model, imgsz)}`")
    tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1][:300]
    raise FormatError(f"exporting the Ultralytics checkpoint {model.name} to ONNX failed: {tail}",
                      f"export it yourself and drop the .onnx: `{export_command(model, imgsz)}`")


class UltralyticsCheckpoint(Format):
    name, display, family = "ultralytics", "Ultralytics checkpoint", "pytorch"
    extensions = ()      # .pt is TorchScript's in the extension table: this one is told apart by content
    toolkit_ext = ".onnx"
    reference_name = "onnxruntime"

    def sniff(self, head: bytes, text: str, path: Path) -> bool:
        return head[:2] == b"PK" and MARKER in head

    def check(self, model: Path, weights: Path | None) -> CheckpointFacts:
        try:
            facts = read_checkpoint(model)
        except (zipfile.BadZipFile, StopIteration, ValueError, OSError) as exc:
            raise FormatError(f"{model.name} looks like an Ultralytics checkpoint but cannot be read "
                              f"({type(exc).__name__})", "copy it again, or export it to ONNX with "
                              f"`{export_command(model, [DEFAULT_IMGSZ] * 2)}`") from None
        if not facts.model_class.endswith("Model"):
            raise FormatError(f"{model.name} holds Ultralytics objects but no model",
                              "drop the training's weights/best.pt or last.pt")
        return facts

    def prepare(self, spec: Any, scratch: Path, quantize: bool = False) -> ExportedPlan:
        """Export to ONNX, then plan it as the ONNX format does (a YOLO head's layout included)."""
        imgsz = spec.options.imgsz or spec.facts.train_imgsz or [DEFAULT_IMGSZ] * 2
        onnx_path = export_onnx(spec.model, imgsz, scratch)
        onnx_spec = replace(spec, format="onnx", model=onnx_path, facts=ONNX.check(onnx_path, None))
        plan = ONNX.prepare(onnx_spec, scratch, quantize)
        how = "the sidecar's imgsz" if spec.options.imgsz else ("its train_args" if spec.facts.train_imgsz
                                                                 else "the default")
        note = (f"{spec.model.name} ({spec.facts.model_class}) was exported to ONNX by Ultralytics in the worker: "
                f"imgsz {imgsz[0]}x{imgsz[1]} ({how}), opset {EXPORT_OPSET}; the same as "
                f"`{export_command(spec.model, imgsz)}`")
        return ExportedPlan(**vars(plan), onnx_spec=onnx_spec, export_note=note)

    def warnings(self, spec: Any, prepared: Any, quantize: bool) -> list[str]:
        return [prepared.export_note] + ONNX.warnings(prepared.onnx_spec, prepared, quantize)

    def load(self, rknn: Any, spec: Any, call: ToolkitCall, model: str, prepared: Any) -> None:
        ONNX.load(rknn, prepared.onnx_spec, call, str(prepared.onnx_spec.model), prepared)

    def output_facts(self, spec: Any, prepared: Any) -> Any:
        return ONNX.output_facts(prepared.onnx_spec, prepared)

    def verify_io(self, spec: Any, prepared: Any) -> tuple[list[list[int]], list[str] | None]:
        return ONNX.verify_io(prepared.onnx_spec, prepared)

    def reference(self, spec: Any, prepared: Any, inputs: list[Any]) -> list[Any]:
        return self.reference_runner(spec, prepared)(inputs)

    def reference_runner(self, spec: Any, prepared: Any) -> Callable[[list[Any]], list[Any]]:
        return ONNX.reference_runner(prepared.onnx_spec, prepared)


FORMAT = UltralyticsCheckpoint()
