"""The stand-in's GPU catalogue: real RunPod GPU type ids and display names, prices of the
order RunPod charges (USD per GPU-hour). Tests pass their own list where prices matter."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuTypeSpec:
    id: str
    display_name: str
    memory_gb: int
    secure_price: float | None  # on demand, per GPU-hour; None: not in Secure Cloud
    community_price: float | None  # None: not in Community Cloud
    secure_spot_price: float | None = None  # minimum bid; None: no spot
    community_spot_price: float | None = None
    manufacturer: str = "Nvidia"
    max_gpu_count: int = 8

    @property
    def secure_cloud(self) -> bool:
        return self.secure_price is not None

    @property
    def community_cloud(self) -> bool:
        return self.community_price is not None

    def price(self, cloud: str) -> float | None:
        return self.secure_price if cloud == "SECURE" else self.community_price

    def spot_price(self, cloud: str) -> float | None:
        return self.secure_spot_price if cloud == "SECURE" else self.community_spot_price


DEFAULT_GPU_TYPES: tuple[GpuTypeSpec, ...] = (
    GpuTypeSpec("NVIDIA RTX A4000", "RTX A4000", 16, 0.25, 0.17, 0.13, 0.09),
    GpuTypeSpec("NVIDIA RTX A5000", "RTX A5000", 24, 0.29, 0.22, 0.15, 0.11),
    GpuTypeSpec("NVIDIA GeForce RTX 3090", "RTX 3090", 24, 0.46, 0.22, 0.23, 0.12),
    GpuTypeSpec("NVIDIA GeForce RTX 4090", "RTX 4090", 24, 0.69, 0.34, 0.35, 0.20),
    GpuTypeSpec("NVIDIA L4", "L4", 24, 0.43, None, 0.22, None),
    GpuTypeSpec("NVIDIA RTX A6000", "RTX A6000", 48, 0.49, 0.33, 0.25, 0.17),
    GpuTypeSpec("NVIDIA L40S", "L40S", 48, 0.86, 0.79, 0.43, 0.40),
    GpuTypeSpec("NVIDIA A100 80GB PCIe", "A100 PCIe", 80, 1.64, 1.19, 0.82, 0.60),
    GpuTypeSpec("NVIDIA H100 80GB HBM3", "H100 SXM", 80, 2.69, None, 1.75, None),
)
