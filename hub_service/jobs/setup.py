"""The GPU job queue as the service runs it: its store on the service's database, its
backends (processes on this machine, or Kubernetes Jobs; and RunPod pods for jobs placed
on a cloud offer, where the service has a RunPod key and a public address), fed by the
inventory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .hub_servers import HubServers
from .manager import Ending, JobQueue, QueueSettings
from .routing import RoutedJobs
from .store import JobStore

if TYPE_CHECKING:
    from ..app import ThinkubeService

__all__ = ["cloud_jobs_unavailable", "make_job_queue", "own_namespace"]

# Where a pod finds the namespace it runs in.
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def own_namespace(namespace_file: Path = NAMESPACE_FILE) -> str:
    """The namespace this service runs in, else `default`."""
    try:
        return namespace_file.read_text().strip() or "default"
    except OSError:
        return "default"


def public_url(service: ThinkubeService) -> str:
    url = service.jobs_public_url.strip()
    return url if not url or url.endswith("/") else url + "/"


def cloud_jobs_unavailable(service: ThinkubeService) -> str | None:
    """Why jobs cannot run on RunPod on this service (None: they can)."""
    offers = service.cloud.offers if service.cloud is not None else None
    if offers is None or not offers.configured:
        return offers.not_configured_reason if offers is not None else "no RunPod key"
    if not public_url(service):
        return (
            "RunPod pods could not reach this service: set c.JupyterHub.public_url (the hub "
            "then tells the service its address) or ThinkubeService.jobs_public_url"
        )
    if offers.fetched_at is None:
        return "RunPod's offers are not known yet" + (f" ({offers.error})" if offers.error else "")
    return None


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

    async def record(entry_id: str, placement: dict) -> None:
        queue = holder["queue"]
        await queue.db(queue.store.update, entry_id, placement=placement)

    async def lookup(entry_id: str):
        queue = holder["queue"]
        return await queue.db(queue.store.get, entry_id)

    if service.inventory == "local":
        from .local import LocalJobs, LocalJobSettings

        def machine():
            documents = source.published.documents
            return documents[0] if documents else None

        local = LocalJobs(
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

        local = KubeJobs(
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
            models_claim=service.jobs_models_claim,
            artifacts_root=service.jobs_artifacts_root,
            datasets_claim=service.jobs_datasets_claim,
        )
    runpod = None
    client = service.cloud.offers.client if service.cloud is not None else None
    if client is not None and public_url(service):
        from .runpod import RunPodJobs, RunPodJobSettings

        runpod = RunPodJobs(
            client,
            RunPodJobSettings(
                public_url=public_url(service),
                artifacts_folder=Path(
                    os.path.expanduser(service.jobs_runpod_artifacts_folder)
                ).absolute(),
                name_prefix=service.cloud_pod_prefix,
                python=service.jobs_runpod_python,
                result_grace_s=service.jobs_runpod_result_grace_seconds,
                exit_grace_s=min(30.0, service.jobs_runpod_result_grace_seconds),
                status_interval_s=service.jobs_runpod_status_interval_seconds,
                max_output_bytes=service.jobs_result_max_bytes,
                max_artifact_bytes=service.jobs_runpod_max_artifact_bytes,
                log_poll_interval_s=min(5.0, service.jobs_runpod_status_interval_seconds),
            ),
            ended,
            record,
            lookup,
        )
    queue = JobQueue(
        JobStore(service.catalog.engine),
        RoutedJobs(local, runpod),
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
