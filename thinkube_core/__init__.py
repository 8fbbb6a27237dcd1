"""What the availability service and the spawners share: exact Kubernetes quantities, pod
accounting as `kubectl describe node` does it, the one feasibility filter, the RunPod client
and the names both sides read and write. Pure or plain I/O (httpx) only: importing it pulls in
neither JupyterHub, kubespawner nor tornado (docs/architecture.md)."""
