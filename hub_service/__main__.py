"""`python -m hub_service`: the availability service, as the hub runs it."""

import os

# First of all: the process that started this one, the hub (see lifecycle.py).
hub_pid = os.getppid()

import gc  # noqa: E402
import signal  # noqa: E402

# Until the service has its own handlers, the hub's SIGINT ends it quietly, as SIGTERM
# does, instead of with a KeyboardInterrupt traceback in the hub's log.
signal.signal(signal.SIGINT, signal.SIG_DFL)

from .app import main  # noqa: E402

main(hub_pid=hub_pid)
# Everything is stopped and closed: tearing down the heap object by object (a second and
# more with 150,000 pods in the inventory) would only delay the exit.
gc.freeze()
