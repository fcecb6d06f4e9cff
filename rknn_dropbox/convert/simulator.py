"""The toolkit's simulator run lean, the worker's heap kept from hoarding freed tensors, its share of the cores, and
the job's peak RSS.

rknn-toolkit2 2.5.0 runs the simulator (init_runtime() + inference(), accuracy_analysis) as one onnxruntime
session per layer.  Each session's CPU memory arena keeps the largest buffers it ever held, so after one
inference the process holds every intermediate tensor of the network until release(): measured on 8 x 256-ch
3x3 convolutions at 224x224, peak RSS 0.50 GB after the build -> 2.50 GB after one inference.  `lean_sessions`
turns the arenas off for the sessions created inside it (0.80 GB, and the inference 3.6x faster).
What remained was glibc's: its mmap threshold rises to 32 MB after large blocks are freed, so later 51 MB tensors
come from the heap and stay there when freed (two samples: 1.23 GB).  `bound_heap_growth` fixes the threshold at
1 MB: tensors are mapped and unmapped, the build's own peak drops too (0.71 -> 0.50 GB) and verification's to 0.63 GB.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any, Iterator

_patch_lock = threading.RLock()  # re-entrant: verification nests the source runtime inside the simulator's


@contextlib.contextmanager
def lean_sessions() -> Iterator[None]:
    """onnxruntime.InferenceSession created inside: enable_cpu_mem_arena and enable_mem_pattern off."""
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - a toolkit dependency
        yield
        return
    with _patch_lock:
        original = ort.InferenceSession.__init__

        def init(self: Any, path_or_bytes: Any, sess_options: Any = None, *args: Any, **kwargs: Any) -> None:
            options = sess_options if sess_options is not None else ort.SessionOptions()
            options.enable_cpu_mem_arena = False
            options.enable_mem_pattern = False
            original(self, path_or_bytes, options, *args, **kwargs)

        ort.InferenceSession.__init__ = init  # type: ignore[method-assign]
        try:
            yield
        finally:
            ort.InferenceSession.__init__ = original  # type: ignore[method-assign]


THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # numpy's BLAS and torch read these
SPINNING = "session.intra_op.allow_spinning"


def _has_entry(options: Any, key: str) -> bool:
    try:
        options.get_session_config_entry(key)
        return True
    except Exception:  # noqa: BLE001 - onnxruntime raises a plain RuntimeError for a missing key
        return False


def share_cores(threads: int) -> None:
    """Every onnxruntime session this process makes (the toolkit's build and simulator, the reference) computes on
    `threads` threads that sleep when idle, and BLAS / torch on as many: called once in a worker, before the
    toolkit is imported, with its share of the cores. onnxruntime's default, a thread per core that spins while it
    waits, costs several times the time when other processes (the pool's other workers) want the same cores:
    ppocr_det, 20 runs in each of two processes at once on 2 cores, 5.8-6.5 s by default, 1.6-1.8 s on 1 thread."""
    import os
    for name in THREAD_ENV:
        os.environ.setdefault(name, str(threads))
    import onnxruntime as ort
    original = ort.InferenceSession.__init__

    def init(self: Any, path_or_bytes: Any, sess_options: Any = None, *args: Any, **kwargs: Any) -> None:
        options = sess_options if sess_options is not None else ort.SessionOptions()
        if options.intra_op_num_threads == 0:  # 0: onnxruntime's default (a thread per core); a set value stays
            options.intra_op_num_threads = threads
        if not _has_entry(options, SPINNING):  # set once (the toolkit reuses its options), and never overridden
            options.add_session_config_entry(SPINNING, "0")
        original(self, path_or_bytes, options, *args, **kwargs)

    ort.InferenceSession.__init__ = init  # type: ignore[method-assign]


M_MMAP_THRESHOLD = -3            # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 1 << 20


def bound_heap_growth() -> bool:
    """Allocations of 1 MB and more are mmapped (returned to the system when freed); False where not glibc."""
    try:
        import ctypes
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def reset_peak_rss() -> bool:
    """Start a new high-water mark of this process's resident memory (Linux: clear_refs 5); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """This process's resident-memory high-water mark (VmHWM) since the last reset, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None
