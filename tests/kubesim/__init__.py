"""kubesim: a faithful Kubernetes API emulator (apiserver, scheduler, kubelet) for tests.

sim = await KubeSim().start()
sim.write_kubeconfig(path)
"""

from .server import Faults
from .sim import KubeSim

__all__ = ["Faults", "KubeSim"]
