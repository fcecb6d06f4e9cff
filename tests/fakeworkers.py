"""Fault-injection worker targets for pool tests (no toolkit): they speak the worker protocol, then misbehave."""

from __future__ import annotations

import ctypes
import os
import time
from multiprocessing.connection import Connection

from rknn_dropbox.service.messages import JobDone, JobProgress, WorkerReady


_held: list[bytes] = []


def _serve(conn: Connection, behave) -> None:
    conn.send(WorkerReady(os.getpid()))
    while True:
        try:
            order = conn.recv()
        except EOFError:
            return
        if order is None:
            return
        behave(conn, order)


def well_behaved(conn: Connection, parent_pid: int) -> None:
    def behave(conn, order):
        conn.send(JobProgress(order.job_id, "build", 50.0))
        conn.send(JobDone(order.job_id, True, result={"pid": os.getpid()}))
    _serve(conn, behave)


def by_name(conn: Connection, parent_pid: int) -> None:
    """Does what the job's name says: segfault, exit, hang, or succeed."""
    def behave(conn, order):
        name = order.name
        if name == "segfault":
            ctypes.string_at(0)
        elif name == "exit":
            os._exit(1)
        elif name.startswith("hang"):
            time.sleep(3600)
        elif name.startswith("slow"):  # a 2 s job that ends in a (fake) failure
            time.sleep(2)
            conn.send(JobDone(order.job_id, False, error="slept 2 s", hint=None))
            return
        elif name.startswith("killed-once"):  # waits to be killed on its first attempt, ends on the next
            marker = os.path.join(order.root, "first-attempt")
            if not os.path.exists(marker):
                open(marker, "w").close()
                time.sleep(3600)
            conn.send(JobDone(order.job_id, False, error="second attempt ran", hint=None))
            return
        elif name.startswith("hog"):  # holds 300 MB past the job, like a leaky toolkit build, then fails it
            _held.append(b"\1" * (300 << 20))
            time.sleep(1.2)
            conn.send(JobDone(order.job_id, False, error="hogged", hint=None))
            return
        conn.send(JobDone(order.job_id, True, result={"pid": os.getpid()}))
    _serve(conn, behave)


def reports_toolkit(conn: Connection, parent_pid: int, toolkit_folder: str | None = None) -> None:
    """Answers every job with the toolkit folder it was started with (what it would put first on sys.path)."""
    def behave(conn, order):
        conn.send(JobDone(order.job_id, True, result={"toolkit_folder": toolkit_folder, "pid": os.getpid()}))
    _serve(conn, behave)


def broken_unless_default(conn: Connection, parent_pid: int, toolkit_folder: str | None = None) -> None:
    """A worker whose toolkit folder does not import (it exits before saying ready); the default one works."""
    if toolkit_folder:
        os._exit(1)
    reports_toolkit(conn, parent_pid)


def start_daemon(cfg, started: list, drops: tuple[str, ...] = (), target=by_name):
    """An in-process Daemon on `cfg` whose workers are `target`, with `drops` (model names) in its inbox, started
    and appended to the test's `started` list (shut down after the test)."""
    from rknn_dropbox.service.daemon import Daemon
    d = Daemon(cfg)
    d.pool.target = target
    started.append(d)
    for name in drops:
        (cfg.inbox / f"{name}.onnx").write_bytes(b"model")
    d.start()
    return d


def fails_fast(conn: Connection, parent_pid: int, toolkit_folder: str | None = None) -> None:
    """Ends every job at once with a (fake) conversion failure naming the worker's toolkit folder: the job goes to
    failed/ with its inputs."""
    def behave(conn, order):
        conn.send(JobDone(order.job_id, False, error=f"fake conversion failure ({toolkit_folder})", hint=None))
    _serve(conn, behave)


def reports_session_threads(conn: Connection, parent_pid: int, threads: int = 0) -> None:
    """Shares the cores as a real worker does (before onnxruntime is used), then answers every job (its root: an ONNX
    model) with what a real onnxruntime session of that model was given: its threads, spinning, OMP_NUM_THREADS."""
    if threads:
        from rknn_dropbox.convert.simulator import share_cores
        share_cores(threads)

    def behave(conn, order):
        import onnxruntime as ort
        session = ort.InferenceSession(order.root, providers=["CPUExecutionProvider"])
        options = session.get_session_options()
        conn.send(JobDone(order.job_id, True, result={
            "threads": options.intra_op_num_threads, "omp": os.environ.get("OMP_NUM_THREADS"),
            "spinning": options.get_session_config_entry("session.intra_op.allow_spinning")
            if threads else "default"}))
    _serve(conn, behave)
