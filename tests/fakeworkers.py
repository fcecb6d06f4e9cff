"""Fault-injection worker targets for pool tests (no toolkit): they speak the worker protocol, then misbehave."""

from __future__ import annotations

import ctypes
import os
import time
from multiprocessing.connection import Connection

from rknn_dropbox.service.messages import JobDone, JobProgress, WorkerReady


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
        elif name == "hang":
            time.sleep(3600)
        conn.send(JobDone(order.job_id, True, result={"pid": os.getpid()}))
    _serve(conn, behave)
