"""kubesim: a faithful Kubernetes API emulator (apiserver, scheduler, kubelet, Job and
garbage-collection controllers, and Kueue when asked) for tests.

    sim = await KubeSim().start()
    sim.write_kubeconfig(path)

Batch work, as a product test drives it:

    sim = await KubeSim(process_runtime=True, kueue=True, job_backoff_s=0.1).start()
    sim.load([make_node("gpu-1", 16, 64, GPU_MODELS[3])])
    sim.load(queue_manifests({"cpu": 8, "memory": "32Gi", "nvidia.com/gpu": 1},
                             tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}]))
    # then, through the API: a Job labelled kueue.x-k8s.io/queue-name=user-queue waits for
    # quota, runs its command as a process (ConfigMaps and claims at their mountPaths), and its
    # pod's log streams from /api/v1/namespaces/default/pods/<pod>/log?follow=true.
"""

from .kueue import queue_manifests
from .server import Faults
from .sim import KubeSim

__all__ = ["Faults", "KubeSim", "queue_manifests"]
