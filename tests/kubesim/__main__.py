"""Run kubesim standalone:

    python -m tests.kubesim --port 6443 --nodes 20 --gpu-nodes 6 --pods 200 --kubeconfig kubeconfig.yaml

The first line on stdout is `kubesim listening on http://127.0.0.1:PORT`; it serves until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

from .generator import populate
from .scheduler import DEFAULT_SCHEDULER_NAMES
from .server import Faults
from .sim import KubeSim


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one scheduler name")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.kubesim",
        description="A Kubernetes API emulator for thinkube-hub's tests.",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--nodes", type=int, default=0, help="generated nodes in all")
    parser.add_argument(
        "--gpu-nodes", type=int, default=0, help="how many of them carry NVIDIA GPUs"
    )
    parser.add_argument("--pods", type=int, default=0, help="generated pods spread over the nodes")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--kubeconfig", help="write a kubeconfig for this server here")
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        help="YAML file of manifests to load (repeatable)",
    )
    parser.add_argument(
        "--process-runtime", action="store_true", help="run pods' commands as local processes"
    )
    parser.add_argument(
        "--kueue",
        action="store_true",
        help="install Kueue: its queues, workloads, admission and visibility API",
    )
    parser.add_argument(
        "--history-window", type=int, default=10000, help="writes kept for watches before 410 Gone"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="injected latency per request, seconds"
    )
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="fraction of requests answered 500/429"
    )
    parser.add_argument(
        "--scheduler-names",
        type=_names,
        default=DEFAULT_SCHEDULER_NAMES,
        help="comma-separated spec.schedulerName values whose pods kubesim schedules "
        f"(default: {','.join(DEFAULT_SCHEDULER_NAMES)})",
    )
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    started = time.monotonic()
    sim = KubeSim(
        history_window=args.history_window,
        process_runtime=args.process_runtime,
        faults=Faults(latency_s=args.latency, error_rate=args.error_rate),
        scheduler_names=args.scheduler_names,
        kueue=args.kueue,
    )
    if args.nodes:
        populate(sim, args.nodes, args.gpu_nodes, args.pods, args.seed)
    for path in args.scenario:
        sim.load_file(path)
    await sim.start(args.port)
    if args.kubeconfig:
        sim.write_kubeconfig(args.kubeconfig)
    print(f"kubesim listening on {sim.url}", flush=True)
    logging.getLogger("kubesim").info("ready in %.1fs", time.monotonic() - started)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
