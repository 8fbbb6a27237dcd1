"""Moved to :mod:`thinkube_core.gpu_isolation` (the service's jobs are isolated the same
way); kept so that older imports keep working."""

from thinkube_core.gpu_isolation import (  # noqa: F401
    DEV_DIR,
    NVIDIA_PROC_DIR,
    DriverGpu,
    HidingPlan,
    IsolationError,
    driver_gpus,
    hiding_plan,
    isolate,
    isolation_command,
    parse_information,
)
