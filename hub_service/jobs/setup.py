"""The GPU job queue as the service runs it: its store on the service's database, its
backend (processes on this machine, or Kubernetes Jobs), fed by the inventory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .local import LocalJobs
from .manager import Ending, JobQueue, QueueSettings
from .store import JobStore

if TYPE_CHECKING:
    from ..app import ThinkubeService

__all__ = ["make_job_queue"]


def make_job_queue(service: ThinkubeService) -> JobQueue | None:
    source = service.source
    if service.inventory != "local":
        service.log.warning("GPU jobs on Kubernetes are not served by this version yet")
        return None
    holder: dict[str, JobQueue] = {}

    async def ended(entry_id: str, ending: Ending) -> None:
        await holder["queue"].ended(entry_id, ending)

    def machine():
        documents = source.published.documents
        return documents[0] if documents else None

    backend = LocalJobs(
        Path(os.path.expanduser(service.jobs_folder)).absolute(),
        gpus_in_use=source.gpus_held,
        machine=machine,
        ended=ended,
    )
    queue = JobQueue(
        JobStore(service.catalog.engine),
        backend,
        documents=lambda: source.published.documents,
        settings=QueueSettings(
            deadline_factor=service.jobs_deadline_factor,
            max_deadline_s=service.jobs_max_deadline_seconds,
        ),
        run_db=service.run_db,
        counted=lambda: source.published.counted_jobs,
    )
    holder["queue"] = queue
    source.listeners.append(queue.poke)
    return queue
