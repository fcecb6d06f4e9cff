"""TensorFlow: frozen .pb, SavedModel folders and checkpoint sets (frozen in the worker), the toolkit's TF lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Any, ContextManager, Iterator

from rknn_dropbox.formats.base import Format, FormatError, ToolkitCall

CHECKPOINT_EXTS = (".meta", ".index")  # and .data-NNNNN-of-TTTTT shards
_NAME_TENSORS_HINT = ("name the graph's tensors in the sidecar: `inputs: [x]`, `outputs: [y]`, "
                      "`input_size_list: [[1, 224, 224, 3]]`")


def is_checkpoint_ext(ext: str) -> bool:
    """The parts of a TensorFlow checkpoint: .meta, .index, .data-00000-of-00001."""
    return ext in CHECKPOINT_EXTS or ext.startswith(".data-")


def require_tensorflow(display: str) -> None:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise FormatError(f"{display} models need TensorFlow, which is not installed",
                          "install rknn-dropbox[tensorflow] (scripts/setup-venv.sh --tensorflow)") from None


@contextlib.contextmanager
def toolkit_tf_lock(lock_dir: Path | None) -> Iterator[None]:
    """Serialize the toolkit's TensorFlow loaders across workers: load_tensorflow writes the fixed
    /tmp/optimized_tf.pb whatever TMPDIR says, so two at once would read each other's graph.  The job's log
    records when the lock was held (the test of the serialization reads it)."""
    if lock_dir is None:
        yield
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / "toolkit-tensorflow.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        print(f"TensorFlow toolkit lock acquired at {time.time():.6f}", flush=True)
        yield
    finally:
        print(f"TensorFlow toolkit lock released at {time.time():.6f}", flush=True)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def find_sets(files: list[Path]) -> tuple[list[tuple[str, Path, Path | None]], set[Path]]:
    """SavedModel folders (saved_model.pb + variables/) and checkpoint sets (.meta + .index + .data-*)."""
    found: list[tuple[str, Path, Path | None]] = []
    used: set[Path] = set()
    for f in files:
        if f.name == "saved_model.pb":
            found.append(("savedmodel", f.parent, None))
            used.update(g for g in files if g.is_relative_to(f.parent))
    for f in files:
        if f in used or f.suffix.lower() != ".meta":
            continue
        prefix = f.name[: -len(".meta")]
        index = f.with_name(prefix + ".index")
        data = [g for g in files if g.parent == f.parent and g.name.startswith(prefix + ".data-")]
        if index not in files or not data:
            missing = [n for n, ok in ((f"{prefix}.index", index in files), (f"{prefix}.data-*", bool(data)))
                       if not ok]
            raise FormatError(f"incomplete TensorFlow checkpoint: found {f.name} but no {' and no '.join(missing)}",
                              "drop the .meta, .index and every .data-* file of the checkpoint together")
        shards = {g.name.rsplit("-of-", 1)[-1] for g in data}
        total = int(next(iter(shards))) if len(shards) == 1 and next(iter(shards)).isdigit() else len(data)
        if len(data) < total:
            raise FormatError(f"incomplete TensorFlow checkpoint {prefix}: {len(data)} of {total} .data-* shards")
        found.append(("checkpoint", f, None))
        used.update([f, index, *data])
        if f.with_name("checkpoint") in files:
            used.add(f.with_name("checkpoint"))
    return found, used


class FrozenGraph(Format):
    """A frozen GraphDef (.pb); SavedModel and checkpoint freeze into one first."""
    name, display, family = "tensorflow", "TensorFlow frozen graph", "tensorflow"
    extensions = (".pb",)
    channels_last = True
    needs_tensorflow = True
    reference_name = "tensorflow"

    def _freeze(self, spec: Any, scratch: Path) -> Any:
        from rknn_dropbox.formats.tensorflow_freeze import prepare_frozen
        o = spec.options
        return prepare_frozen(spec.model, o.inputs, o.outputs, o.input_size_list)

    def prepare(self, spec: Any, scratch: Path, quantize: bool = False) -> Any:
        """The frozen graph with its input/output tensors and shapes (freezing in this worker)."""
        from rknn_dropbox.formats.tensorflow_freeze import TFGraphError
        require_tensorflow(self.display)
        try:
            graph = self._freeze(spec, scratch)
        except TFGraphError as exc:
            raise FormatError(str(exc), _NAME_TENSORS_HINT) from None
        print(f"TensorFlow graph: inputs {graph.inputs} {graph.input_size_list}, outputs {graph.outputs} "
              f"({graph.found})")
        return graph

    def toolkit_lock(self, lock_dir: Path | None) -> ContextManager[None]:
        return toolkit_tf_lock(lock_dir)

    def load(self, rknn: Any, spec: Any, call: ToolkitCall, model: str, prepared: Any) -> None:
        call("loading", rknn.load_tensorflow, tf_pb=str(prepared.pb), inputs=prepared.inputs,
             outputs=prepared.outputs, input_size_list=prepared.input_size_list)

    def verify_io(self, spec: Any, prepared: Any) -> tuple[list[list[int]], list[str] | None]:
        return prepared.input_size_list, prepared.outputs

    def reference(self, spec: Any, prepared: Any, inputs: list[Any]) -> list[Any]:
        import tensorflow as tf
        gd = tf.compat.v1.GraphDef()
        gd.ParseFromString(prepared.pb.read_bytes())
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(gd, name="")

        def tensor(n: str) -> str:
            return n if ":" in n else f"{n}:0"
        with tf.compat.v1.Session(graph=graph) as sess:
            return sess.run([tensor(n) for n in prepared.outputs],
                            {tensor(n): x for n, x in zip(prepared.inputs, inputs)})


class SavedModel(FrozenGraph):
    """A SavedModel folder (saved_model.pb + variables/), frozen at its serving signature."""
    name, display = "savedmodel", "TensorFlow SavedModel"
    extensions = ()

    def _freeze(self, spec: Any, scratch: Path) -> Any:
        from rknn_dropbox.formats.tensorflow_freeze import freeze_saved_model
        o = spec.options
        return freeze_saved_model(spec.model, scratch / "frozen_savedmodel.pb", o.inputs, o.outputs,
                                  o.input_size_list)

    def model_files(self, model: Path, weights: Path | None, files: list[Path]) -> list[Path]:
        return sorted(f for f in files if f.is_relative_to(model))

    def cache_role(self, f: Path, model: Path) -> str:
        return str(f.relative_to(model))


class Checkpoint(FrozenGraph):
    """A TF1 checkpoint set (<prefix>.meta + .index + .data-*), restored and frozen at its outputs."""
    name, display = "checkpoint", "TensorFlow checkpoint"
    extensions = ()

    def _freeze(self, spec: Any, scratch: Path) -> Any:
        from rknn_dropbox.formats.tensorflow_freeze import freeze_checkpoint
        o = spec.options
        return freeze_checkpoint(spec.model, scratch / "frozen_checkpoint.pb", o.inputs, o.outputs,
                                 o.input_size_list)

    def model_files(self, model: Path, weights: Path | None, files: list[Path]) -> list[Path]:
        prefix = model.name[: -len(".meta")]
        return sorted(f for f in files if f.parent == model.parent and f.name.startswith(prefix + "."))


FROZEN, SAVEDMODEL, CHECKPOINT = FrozenGraph(), SavedModel(), Checkpoint()
