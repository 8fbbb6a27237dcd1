"""The GPU job queue as the service runs it: its store on the service's database, its
backend (processes on this machine, or Kubernetes Jobs), fed by the inventory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .hub_servers import HubServers
from .manager import Ending, JobQueue, QueueSettings
from .store import JobStore

if TYPE_CHECKING:
    from ..app import ThinkubeService

__all__ = ["make_job_queue", "own_namespace"]

# Where a pod finds the namespace it runs in.
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def own_namespace(namespace_file: Path = NAMESPACE_FILE) -> str:
    """The namespace this service runs in, else `default`."""
    try:
        return namespace_file.read_text().strip() or "default"
    except OSError:
        return "default"


def make_job_queue(service: ThinkubeService) -> JobQueue:
    source = service.source
    holder: dict[str, JobQueue] = {}
    settings = QueueSettings(
        deadline_factor=service.jobs_deadline_factor,
        max_deadline_s=service.jobs_max_deadline_seconds,
        waiting_max_s=service.waiting_max_seconds,
        server_max_age_s=service.server_max_age_seconds,
    )

    async def ended(entry_id: str, ending: Ending) -> None:
        await holder["queue"].ended(entry_id, ending)

    async def started(entry_id: str, node: str | None) -> None:
        await holder["queue"].started(entry_id, node)

    if service.inventory == "local":
        from .local import LocalJobs, LocalJobSettings

        def machine():
            documents = source.published.documents
            return documents[0] if documents else None

        backend = LocalJobs(
            Path(os.path.expanduser(service.jobs_folder)).absolute(),
            gpus_in_use=source.gpus_held,
            machine=machine,
            ended=ended,
            claims=source.claims,  # the folder the hub's servers claim in
            settings=LocalJobSettings(
                system_users=service.jobs_system_users,
                account_prefix=service.jobs_account_prefix,
                account_home_root=service.jobs_account_home_root,
                gpu_isolation=service.jobs_gpu_isolation,
            ),
        )
    else:
        from .kube import KubeJobs

        backend = KubeJobs(
            source.api_client,
            service.jobs_namespace or own_namespace(),
            ended,
            started,
            kueue_queue=service.jobs_kueue_queue,
            ttl_s=service.jobs_ttl_seconds,
            python=service.jobs_python,
            max_output_bytes=service.jobs_result_max_bytes,
            tolerations=settings.tolerations,
            gpu_taint_keys=settings.gpu_taint_keys,
        )
    queue = JobQueue(
        JobStore(service.catalog.engine),
        backend,
        documents=lambda: source.published.documents,
        settings=settings,
        run_db=service.run_db,
        counted=lambda: source.published.counted_jobs,
        # waiting notebook servers are started through the hub's REST API
        servers=HubServers(service.hub_auth.api_url, service.hub_auth.api_token),
        held_servers=lambda: source.published.held_servers,
    )
    holder["queue"] = queue
    source.listeners.append(queue.poke)
    return queue
