"""A worker process: imports the toolkit and convert/ once (the only service module that may), then converts jobs."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path

from rknn_dropbox.intake.workarea import JobDir
from rknn_dropbox.service.messages import JobDone, JobProgress, WorkerReady, WorkOrder

PR_SET_PDEATHSIG = 1
WORKER_NICENESS = 10  # conversions are batch work: the daemon's loop and status server come first on a busy CPU


def die_with_parent(parent_pid: int) -> None:
    """Never outlive the daemon: the kernel's parent-death signal, and a watchdog thread where that is missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def warm_toolkit() -> None:
    """What every job would otherwise import on its first use, before the worker says it is ready: the toolkit
    (seconds), the runtime the simulator and the reference run on, and what the toolkit's RKNN() imports the first
    time one is made (pkg_resources), so a worker's first job costs what its later ones do."""
    import rknn.api  # noqa: F401
    import onnxruntime  # noqa: F401
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # setuptools says pkg_resources is deprecated
        try:
            import pkg_resources  # noqa: F401
        except ImportError:  # a toolkit that no longer needs it
            pass
    import rknn_dropbox.convert.predict_script  # noqa: F401
    import rknn_dropbox.formats.rknnfile  # noqa: F401


def worker_main(conn: Connection, parent_pid: int, preload: bool = True, toolkit_folder: str | None = None,
                threads: int = 0) -> None:
    """The worker loop: a WorkOrder in, JobProgress... then JobDone out; EOF or None ends it. The worker imports
    exactly one rknn-toolkit2: the venv's, or the one in `toolkit_folder` (first on sys.path before `import rknn`);
    its onnxruntime, BLAS and torch compute on `threads` threads (its share of the cores; 0: their defaults)."""
    if toolkit_folder:
        sys.path.insert(0, toolkit_folder)
    die_with_parent(parent_pid)
    try:
        os.nice(WORKER_NICENESS)
    except OSError:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the daemon decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if threads > 0:
        from rknn_dropbox.convert.simulator import share_cores
        share_cores(threads)
    if preload:
        warm_toolkit()
    import rknn_dropbox.convert.job  # noqa: F401  (the converter too, before saying ready, as always)
    conn.send(WorkerReady(os.getpid()))
    while True:
        try:
            order: WorkOrder | None = conn.recv()
        except (EOFError, OSError):
            return
        if order is None:
            return
        done = run_order(order, conn)
        try:
            conn.send(done)
        except (BrokenPipeError, OSError):
            return


def run_order(order: WorkOrder, conn: Connection) -> JobDone:
    """Convert one job; every outcome, even a bug, becomes a JobDone (the worker must answer for every job)."""
    from rknn_dropbox.convert.job import ConversionError, JobSettings, convert_job, describe_exception
    from rknn_dropbox.options import ConvertOptions
    from rknn_dropbox.toolkits import ToolkitMismatch

    def progress(stage: str, pct: float) -> None:
        conn.send(JobProgress(order.job_id, stage, round(pct, 1)))

    try:
        result = convert_job(JobDir(Path(order.root)), order.name, ConvertOptions.from_json(order.defaults),
                             progress, JobSettings.from_order(order.settings()))
        return JobDone(order.job_id, True, result=asdict(result))
    except ToolkitMismatch as exc:  # the job asks for another version: the daemon sends it to a worker of that one
        return JobDone(order.job_id, False, error=str(exc), needs_toolkit=exc.wanted.version)
    except ConversionError as exc:
        return JobDone(order.job_id, False, error=exc.error, hint=exc.hint, crash=exc.crash)
    except Exception as exc:  # noqa: BLE001 - the worker must answer for every job
        return JobDone(order.job_id, False, error=f"internal error: {describe_exception(exc)}",
                       hint="see conversion.log; this is a bug in rknn-dropbox or the toolkit")
