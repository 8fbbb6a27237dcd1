"""RunPod for the spawners: the cloud server backend, RemoteRunPodSpawner, its form and
settings, and the `thinkube cloud` commands. The RunPod client itself is in
`thinkube_core.runpod`, shared with the availability service."""
