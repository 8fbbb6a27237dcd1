"""thinkube-hub's spawners: pick a GPU from what is actually free."""

__all__ = ["ThinkubeSpawner"]


def __getattr__(name: str):
    # Imported on first use, so that the small commands in this package (run_as,
    # gpu_isolation, the CLI) start without loading kubespawner.
    if name == "ThinkubeSpawner":
        from .spawner import ThinkubeSpawner

        return ThinkubeSpawner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
