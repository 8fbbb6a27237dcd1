"""The hub's modules out of the collector's full collections once it loads the spawner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_loading_the_spawner_leaves_what_the_hub_imported_out_of_full_collections():
    code = (
        "import gc, jupyterhub.app, thinkube_spawner.spawner;"
        "print(gc.get_freeze_count(), len(gc.get_objects()))"
    )
    answer = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    frozen, walked = map(int, answer.stdout.split())
    # JupyterHub's, kubespawner's and kubernetes_asyncio's modules and classes
    assert frozen > 100_000
    assert walked < 1_000  # what a full collection still walks
