"""What every model format provides (the Format base class) and the light helpers the formats share."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

# how a format hands a toolkit call to the converter: call(step, toolkit_function, **kwargs); the converter
# explains a failure (its error patterns, the captured log) and raises ConversionError
ToolkitCall = Callable[..., None]


class FormatError(ValueError):
    """A model that cannot be converted as it is; `error` says what was found, `hint` what to do."""

    def __init__(self, error: str, hint: str | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.hint = hint


@dataclass(frozen=True)
class OutputFacts:
    """What a format's graph says of its outputs, for verification's task checks (convert/checks/)."""
    graph: list[Any] | None = None        # per output: formats/onnx_outputs.GraphOutput (producer, activation, parts)
    yolo_concat: list[str] = field(default_factory=list)  # outputs a stock Ultralytics head concatenates
    yolo_layout: Any = None               # the YOLO output layout the format delivered (convert/yolo), None: as is


class Format:
    """One model format: how its files are recognised and grouped, checked, loaded and verified.

    Subclasses override what differs; the defaults describe a plain single-file model without a reference
    runtime.  Methods that need a heavy library (onnx, torch, tensorflow, numpy) import it inside."""

    name: str = ""                        # result.json "format"
    display: str = ""                     # in sentences: "TensorFlow SavedModel"
    family: str = ""                      # model_config.yml `platform:` (tensorflow for SavedModel/checkpoint)
    extensions: tuple[str, ...] = ()      # single-file extensions that are this format
    pair: tuple[str, str] | None = None   # (description, weights) extensions of a two-file model
    toolkit_ext: str | None = None        # the extension the toolkit's loader insists on
    channels_last: bool = False           # NHWC inputs (verification feeds this layout)
    needs_tensorflow: bool = False
    reference_name: str | None = None     # the runtime verification compares with; None: not verified
    int8_threshold_when_prequantized: bool = False
    sniff_skips_exts: tuple[str, ...] = ()  # extensions never sniffed as this format's description

    def sniff(self, head: bytes, text: str, path: Path) -> bool:
        """Whether the first bytes (and their comment-stripped text) are this format's."""
        return False

    def check(self, model: Path, weights: Path | None) -> Any:
        """Content checks clearer than the toolkit's errors; returns facts kept on the spec (or None)."""
        return None

    def model_files(self, model: Path, weights: Path | None, files: list[Path]) -> list[Path]:
        """The files that make the model (the cache key)."""
        return [f for f in (model, weights) if f is not None]

    def cache_role(self, f: Path, model: Path) -> str:
        """A file's role in the cache key, not its name: the same model under another name is the same key."""
        return f.name[len(f.name.split(".")[0]):].lower()

    def is_prequantized(self, spec: Any) -> bool:
        return False

    def prepare(self, spec: Any, scratch: Path, quantize: bool = False) -> Any:
        """Work before the toolkit sees the model (freezing a TensorFlow graph, a YOLO head's layout for an int8 or
        fp16 build); passed to load and verify."""
        return None

    def warnings(self, spec: Any, prepared: Any, quantize: bool) -> list[str]:
        """What result.json should tell about this model before it is built (e.g. a YOLO head, a batch fixed to 1)."""
        return []

    def toolkit_lock(self, lock_dir: Path | None) -> ContextManager[None]:
        """Held around the toolkit's load and build (TensorFlow's loaders share a fixed temp file)."""
        return contextlib.nullcontext()

    def load(self, rknn: Any, spec: Any, call: ToolkitCall, model: str, prepared: Any) -> None:
        raise NotImplementedError

    def skip_verification(self) -> str | None:
        """Why this format is never verified (no runtime here), or None."""
        return None

    def verify_io(self, spec: Any, prepared: Any) -> tuple[list[list[int]], list[str] | None]:
        """Input shapes and output names for verification."""
        return list(spec.options.input_size_list or []), None

    def output_facts(self, spec: Any, prepared: Any) -> OutputFacts:
        """What the graph says of each output (none: the checks go by the outputs' shapes)."""
        return OutputFacts()

    def simulator_io(self, spec: Any, raw: list[Any], norm: list[Any]) -> tuple[list[Any], Any]:
        """The simulator's inputs and a function converting its outputs (None: as they are)."""
        return raw, None

    def reference(self, spec: Any, prepared: Any, inputs: list[Any]) -> list[Any]:
        raise NotImplementedError

    def reference_runner(self, spec: Any, prepared: Any) -> Callable[[list[Any]], list[Any]]:
        """The reference outputs of one sample at a time (formats override it to load the model once)."""
        return lambda inputs: list(self.reference(spec, prepared, inputs))


class IntegrityError(ValueError):
    """A weights file that does not match its network description; the message names the layer and byte counts."""
