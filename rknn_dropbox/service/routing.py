"""Which rknn-toolkit2 each job goes to: the default, the version its worker found it needs, or a fallback's."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rknn_dropbox.intake.workarea import JobDir, note_in_manifest
from rknn_dropbox.service.messages import JobDone
from rknn_dropbox.store import JobStore
from rknn_dropbox.toolkits import fallback_exhausted, installed_names, installed_toolkits, next_fallback

MAX_HANDOVERS = 3  # a job handed to a worker of another version more often than this fails (a broken install)


@dataclass
class ToolkitPlan:
    """What the daemon knows about one job's toolkit."""
    toolkit: str | None = None  # None: not known yet, the default; else build with exactly this version
    crashed: list[dict[str, str]] = field(default_factory=list)  # versions that crashed on it (fallback reason)
    handovers: int = 0


@dataclass(frozen=True)
class Retry:
    """The job goes back to the front of the queue, for a worker of `toolkit`."""
    toolkit: str
    reason: str


class ToolkitRouter:
    """Plans per job, kept in the job store too (a restarted daemon resumes a fallback where it was); the daemon
    asks it where a queued job goes and what a worker's answer means."""

    def __init__(self, default_toolkit: str, store: JobStore | None = None) -> None:
        self.default_toolkit = default_toolkit
        self.store = store
        self.plans: dict[str, ToolkitPlan] = {}
        for job_id, saved in (store.toolkit_plans() if store is not None else {}).items():
            try:
                self.plans[job_id] = ToolkitPlan(**json.loads(saved))
            except (ValueError, TypeError):
                pass  # unreadable: the default, as for a new job

    def toolkit_of(self, job_id: str) -> str:
        plan = self.plans.get(job_id)
        return plan.toolkit if plan and plan.toolkit else self.default_toolkit

    def order_fields(self, job_id: str) -> dict[str, Any]:
        """The WorkOrder fields that say which toolkit builds the job."""
        plan = self.plans.get(job_id) or ToolkitPlan()
        return {"default_toolkit": self.default_toolkit, "toolkit": plan.toolkit, "crashed": tuple(plan.crashed)}

    def retry(self, job_id: str, done: JobDone) -> Retry | None:
        """A worker's answer that sends the job to another version: it needs one, or its toolkit crashed."""
        plan = self.plans.setdefault(job_id, ToolkitPlan())
        retry = None
        if done.needs_toolkit and plan.handovers < MAX_HANDOVERS:
            plan.toolkit, plan.handovers = done.needs_toolkit, plan.handovers + 1
            retry = Retry(done.needs_toolkit, f"needs rknn-toolkit2 {done.needs_toolkit}: handed to a worker of it")
        if retry is None and not done.ok and done.crash is not None:
            toolkit, plan.crashed = next_fallback(done.crash, plan.crashed)
            if toolkit is not None:
                plan.toolkit = toolkit.version
                retry = Retry(toolkit.version, f"rknn-toolkit2 {done.crash['toolkit']} crashed ({done.error}); "
                                               f"trying rknn-toolkit2 {toolkit.version}")
        if retry is not None and self.store is not None:
            saved = json.dumps(asdict(plan))
            self.store.update(job_id, toolkit_plan=saved)
            record = self.store.get(job_id)
            if record is not None and record.work_path:  # a host taking the claim over resumes the plan
                note_in_manifest(JobDir(Path(record.work_path)), toolkit_plan=saved)
        return retry

    def learn(self, job_id: str, saved: str) -> None:
        """The plan a taken-over job carried in its job.json."""
        try:
            self.plans[job_id] = ToolkitPlan(**json.loads(saved))
        except (ValueError, TypeError):
            pass  # unreadable: the default, as for a new job

    def final_error(self, job_id: str, done: JobDone) -> str:
        """The failed job's error, naming every version that crashed on it; forgets the job."""
        plan = self.plans.pop(job_id, None) or ToolkitPlan()
        error = done.error or "the worker reported no error"
        if done.needs_toolkit:
            return (f"no worker could load rknn-toolkit2 {done.needs_toolkit} (installed: "
                    f"{installed_names(installed_toolkits())}); see `rknn-dropbox toolkits`")
        return fallback_exhausted(error, plan.crashed)

    def broken(self, job_id: str, toolkit: str) -> str:
        """The error of a job whose version cannot start a worker; forgets the job."""
        self.plans.pop(job_id, None)
        return f"rknn-toolkit2 {toolkit} does not start in a worker process (a broken install?)"

    def forget(self, job_id: str) -> None:
        self.plans.pop(job_id, None)


def toolkit_folder(version: str) -> str | None:
    """The folder a worker of `version` puts first on sys.path (None: the venv's own toolkit)."""
    for tk in installed_toolkits():
        if tk.version == version:
            return tk.sys_path_entry()
    return None


def missing_default(default_toolkit: str) -> str | None:
    """Why the daemon cannot start its workers, when the default toolkit is not installed."""
    toolkits = installed_toolkits()
    if any(t.version == default_toolkit for t in toolkits):
        return None
    return (f"rknn-toolkit2 {default_toolkit} (the first of [toolkits] versions) is not installed (installed: "
            f"{installed_names(toolkits)}): run `rknn-dropbox toolkits install {default_toolkit}`")
