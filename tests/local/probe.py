"""Run first in a local server's command, inside whatever the spawner set up around it (the
GPU isolation namespace, CPU affinity, environment): record what the server's own process
sees as JSON, then exec the real server.

    python tests/local/probe.py OUT.json [--dev-dir D] [--proc-dir P] [--gpu] -- CMD...

"{user}" in OUT.json becomes the server's user ($JUPYTERHUB_USER); --gpu also records
what nvidia-smi and CUDA list.

Standalone (no imports from the repository): the server's folder is not the checkout.
"""

import json
import os
import subprocess
import sys

CUDA_UUIDS = r"""
import ctypes
cuda = ctypes.CDLL("libcuda.so.1")
assert cuda.cuInit(0) == 0
count = ctypes.c_int()
assert cuda.cuDeviceGetCount(ctypes.byref(count)) == 0
for ordinal in range(count.value):
    device, raw = ctypes.c_int(), (ctypes.c_ubyte * 16)()
    assert cuda.cuDeviceGet(ctypes.byref(device), ordinal) == 0
    assert cuda.cuDeviceGetUuid(raw, device) == 0
    h = bytes(raw).hex()
    print(f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
"""


def opens(path: str) -> str:
    try:
        with open(path, "rb"):
            return "opens"
    except OSError as err:
        return type(err).__name__


def lines(*command: str) -> list[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] + (
        [f"exit {done.returncode}: {done.stderr.strip()}"] if done.returncode else []
    )


def main() -> None:
    args = sys.argv[1:]
    split = args.index("--")
    options, command = args[:split], args[split + 1 :]
    out = options[0].replace("{user}", os.environ.get("JUPYTERHUB_USER", "unknown"))
    dev_dir = options[options.index("--dev-dir") + 1] if "--dev-dir" in options else "/dev"
    proc_dir = (
        options[options.index("--proc-dir") + 1]
        if "--proc-dir" in options
        else "/proc/driver/nvidia/gpus"
    )
    seen = {
        "uid": os.geteuid(),
        "cpus": sorted(os.sched_getaffinity(0)),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "devices": {
            name: opens(os.path.join(dev_dir, name))
            for name in sorted(os.listdir(dev_dir))
            if name.startswith("nvidia") and name[6:].isdigit()
        },
        "driver_gpus": sorted(os.listdir(proc_dir)) if os.path.isdir(proc_dir) else None,
    }
    if "--gpu" in options:
        seen["nvidia_smi"] = lines("nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader")
        seen["cuda"] = lines(sys.executable, "-c", CUDA_UUIDS)
    with open(out + ".part", "w") as f:
        json.dump(seen, f)
    os.replace(out + ".part", out)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
