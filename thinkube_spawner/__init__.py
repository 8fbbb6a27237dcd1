"""thinkube-hub's spawners: pick a GPU from what is actually free."""

from .spawner import ThinkubeSpawner

__all__ = ["ThinkubeSpawner"]
