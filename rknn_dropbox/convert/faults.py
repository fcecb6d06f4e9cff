"""Test-only fault injection: make a worker die the ways the toolkit's native code does, for named bundles.

Not an option a user can set: it needs RKNN_DROPBOX_FAULT_INJECTION=1 in the daemon's environment, and
RKNN_DROPBOX_FAULTS names the bundles and their faults ("victim=slow,segv=segfault").  Faults: segfault, abort,
exit, hang, oom, raise, slow (sleeps RKNN_DROPBOX_FAULT_SLOW_SECONDS, default 5, then converts normally);
repair_candidate (a segfault when the first accuracy-repair candidate starts building, as the toolkit's does),
repair_hang (that candidate never finishes)."""

from __future__ import annotations

import os
import time

FAULTS = ("segfault", "exit", "hang", "oom", "abort", "raise", "slow", "toolkit-crash", "repair_candidate",
          "repair_hang")


def injected_toolkit_crash(bundle_name: str, toolkit_version: str) -> bool:
    """"toolkit-crash": this bundle's build crashes inside rknn-toolkit2 RKNN_DROPBOX_FAULT_CRASH_TOOLKIT only (the
    fallback to another version is what such a test watches); False outside tests."""
    return fault_for(bundle_name) == "toolkit-crash" and \
        os.environ.get("RKNN_DROPBOX_FAULT_CRASH_TOOLKIT") == toolkit_version


def fault_for(bundle_name: str) -> str | None:
    """The fault the test environment assigns to this bundle, or None (always None outside tests)."""
    if os.environ.get("RKNN_DROPBOX_FAULT_INJECTION") != "1":
        return None
    for item in os.environ.get("RKNN_DROPBOX_FAULTS", "").split(","):
        name, _, fault = item.strip().partition("=")
        if name == bundle_name and fault in FAULTS:
            return fault
    return None


def inject_fault(bundle_name: str) -> None:
    """Die (or stall) as the test environment says for this bundle; nothing outside tests."""
    fault = fault_for(bundle_name)
    if fault == "segfault":
        import ctypes
        ctypes.string_at(0)
    elif fault == "abort":
        os.abort()
    elif fault == "exit":
        os._exit(1)
    elif fault == "hang":
        time.sleep(10**6)
    elif fault == "oom":
        hog = []
        while True:
            hog.append(bytearray(64 * 1024 * 1024))
    elif fault == "raise":
        raise RuntimeError("injected fault")
    elif fault == "slow":
        time.sleep(float(os.environ.get("RKNN_DROPBOX_FAULT_SLOW_SECONDS", "5")))


def inject_repair_fault(bundle_name: str) -> None:
    """"repair_candidate": the worker dies of SIGSEGV as an accuracy-repair candidate starts; "repair_hang": the
    candidate never finishes; nothing outside tests."""
    fault = fault_for(bundle_name)
    if fault == "repair_candidate":
        import ctypes
        ctypes.string_at(0)
    elif fault == "repair_hang":
        time.sleep(10**6)
