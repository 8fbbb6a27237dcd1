"""The things a spawn form offers and a person chooses: placements and checked choices.
Plain data, shared by the menu (which builds them), the pod shaping (which applies a choice)
and the form (which shows them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from thinkube_core.runpod.offers import Offer

GIB = 1024**3
GPU_TAINT_KEY = "nvidia.com/gpu"
PROFILE_SLUG = "thinkube"
ANY_CPU = "cpu"
CLOUD_PREFIX = "cloud:"
CLOUD_GROUP = "RunPod cloud"
ON_DEMAND, SPOT = "on-demand", "spot"


class ChoiceError(ValueError):
    """A choice that cannot be spawned; the message is meant for the person who made it.
    `capacity` is true when the choice is valid but does not fit right now; `choice` is
    then the checked choice (what a request to wait for its place holds)."""

    def __init__(self, message: str, capacity: bool = False, choice: Choice | None = None):
        super().__init__(message)
        self.capacity = capacity
        self.choice = choice


@dataclass
class Placement:
    """Where a server may go: CPU only anywhere, any node with a free GPU model, one node, or
    a cloud offer. `frontier` holds the free room (scheduler units) of the nodes whose rules
    take this placement's pod, reduced to those no other node beats in every resource: if a
    pod fits any such node, it fits one of these."""

    key: str
    kind: str  # "cpu" | "gpu" | "node" | "cloud"
    label: str
    node: str | None = None
    gpu_resource: str | None = None
    gpu_product: str | None = None
    gpu_product_label: str | None = None  # the node label that carries the product
    gpu_model: str | None = None
    gpu_memory_mib: int | None = None
    frontier: list[dict[str, Any]] = field(default_factory=list)  # {"node", "free"}
    taking: int = 0  # how many nodes take this placement's pod (room or not)
    gpus_free: int = 0  # free GPUs of its resource on those nodes
    gpu_nodes_free: int = 0  # how many of those nodes have a free GPU
    # Why the nodes that do not take this placement's pod refuse it: reason -> node count.
    refusals: dict[str, int] = field(default_factory=dict)
    disabled: bool = False
    reason: str | None = None
    group: str = ""
    offer: Offer | None = None  # a cloud placement's RunPod offer


@dataclass(frozen=True)
class Choice:
    """A validated choice, every part taken from the menu."""

    image: dict
    placement: Placement
    cpu: float
    memory_gib: int
    gpus: int
    node: str | None  # pinned node, if the person chose one
    cpu_request: float
    memory_request: int
    spot: bool = False  # a cloud choice's pricing

    @property
    def cloud(self) -> bool:
        return self.placement.kind == "cloud"

    def as_user_options(self) -> dict[str, str]:
        """The choice as the form's own values: the keys kubespawner looks up in the profile's
        choices (a REST call may send `4`, `"4.0"` or `" 4"`; the profile only has `"4"`)."""
        options = {
            "profile": PROFILE_SLUG,
            "image": self.image["name"],
            "where": self.placement.key,
            "cpu": fmt(self.cpu),
            "memory": fmt(self.memory_gib),
            "gpus": fmt(self.gpus),
        }
        if self.cloud:
            options["pricing"] = SPOT if self.spot else ON_DEMAND
        return options


def fmt(value: float) -> str:
    return f"{value:g}"
