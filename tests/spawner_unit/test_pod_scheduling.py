"""The pod the menu reasons about is the pod kubespawner submits.

The form decides what is offered from `PodTemplate.spec` (shaping.pod_scheduling_spec), a
model of what kubespawner's `get_pod_manifest` writes. These tests hold the two equal, for
the admin configurations the product meets (Zero to JupyterHub's user scheduling, node
selectors, required affinity, extra pod config, extra and init containers), and fail when a
kubespawner release changes how it writes them."""

from __future__ import annotations

import pytest
from kubernetes_asyncio.client import ApiClient

from tests.spawner_unit.cluster import lab_menu, make_spawner
from thinkube_core.scheduling import PodRules, pod_demand
from thinkube_spawner.menu import MenuSettings, check_choice
from thinkube_spawner.shaping import and_terms, apply_to_configured, spawner_overrides

Z2JH_USER_TOLERATIONS = [
    {
        "key": "hub.jupyter.org/dedicated",
        "operator": "Equal",
        "value": "user",
        "effect": "NoSchedule",
    },
    {
        "key": "hub.jupyter.org_dedicated",
        "operator": "Equal",
        "value": "user",
        "effect": "NoSchedule",
    },
]
NODE_PURPOSE = {
    "matchExpressions": [
        {"key": "hub.jupyter.org/node-purpose", "operator": "In", "values": ["user"]}
    ]
}

CONFIGURATIONS = {
    "defaults": {},
    # what Zero to JupyterHub's chart gives KubeSpawner with scheduling.userPods defaults,
    # matchNodePurpose: require and the user scheduler on
    "z2jh": {
        "tolerations": Z2JH_USER_TOLERATIONS,
        "node_affinity_required": [NODE_PURPOSE],
        "scheduler_name": "jupyterhub-user-scheduler",
    },
    "selector and dict-valued traits": {
        "node_selector": {"pool": "notebooks"},
        "tolerations": {
            "b-team": {"key": "team", "operator": "Exists", "effect": "NoSchedule"},
            "a-gpu": {"key": "nvidia.com/gpu", "operator": "Equal", "value": "x"},
        },
        "node_affinity_required": {
            "zone": {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["c"]}]}
        },
    },
    "extra pod config": {
        "extra_pod_config": {
            "tolerations": [{"operator": "Exists"}],
            "node_selector": {"disk": "ssd"},
            "overhead": {"cpu": "250m", "memory": "120Mi"},
        }
    },
    "extra pod config affinity replaces ours": {
        "extra_pod_config": {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [NODE_PURPOSE]
                    }
                }
            }
        }
    },
    "containers": {
        "extra_containers": [
            {
                "name": "proxy",
                "image": "nginx:1.27",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
            }
        ],
        "init_containers": [
            {
                "name": "warm",
                "image": "busybox:1.36",
                "resources": {"requests": {"cpu": "6", "memory": "1Gi"}},
            },
            {
                "name": "shipper",
                "image": "fluent/fluent-bit:3.2",
                "restartPolicy": "Always",
                "resources": {"limits": {"cpu": "50m", "memory": "32Mi"}},
            },
        ],
    },
    "container config and no guarantee": {
        "extra_container_config": {"resources": {"limits": {"cpu": "3", "memory": "3Gi"}}},
    },
}

CHOICES = {
    "cpu": {"image": "scipy", "cpu": "4", "memory": "8"},
    "gpu model": {
        "image": "pytorch-cuda",
        "where": "gpu:nvidia-a100-sxm4-80gb",
        "cpu": "8",
        "memory": "32",
        "gpus": "2",
    },
    "pinned gpu node": {"image": "pytorch-cuda", "where": "node:gpu-node-3", "gpus": "1"},
    "pinned cpu node": {"image": "minimal", "where": "node:cpu-node-1", "cpu": "1", "memory": "2"},
}


async def submitted_spec(spawner, choice) -> dict:
    """What kubespawner would send, after applying the choice as load_user_options does."""
    for name, value in apply_to_configured(
        spawner_overrides(choice, spawner.pod_settings()), spawner._configured
    ).items():
        setattr(spawner, name, value)
    pod = await super(type(spawner), spawner).get_pod_manifest()  # kubespawner's own
    async with ApiClient() as api:
        return api.sanitize_for_serialization(pod)["spec"]


@pytest.mark.parametrize("choice_name", list(CHOICES))
@pytest.mark.parametrize("config_name", list(CONFIGURATIONS))
async def test_the_modelled_pod_schedules_as_kubespawners_pod(config_name, choice_name):
    spawner = make_spawner(**CONFIGURATIONS[config_name])
    choice = check_choice(CHOICES[choice_name], lab_menu())
    real = await submitted_spec(spawner, choice)
    modelled = spawner.pod_template().spec(choice)
    assert PodRules.of_pod_spec(modelled) == PodRules.of_pod_spec(real)
    assert pod_demand(modelled) == pod_demand(real)
    assert modelled.get("schedulerName") == real.get("schedulerName")


async def test_the_z2jh_pod_keeps_the_admins_terms_and_adds_the_choice_to_each():
    spawner = make_spawner(**CONFIGURATIONS["z2jh"])
    choice = check_choice(CHOICES["gpu model"], lab_menu())
    real = await submitted_spec(spawner, choice)
    rules = PodRules.of_pod_spec(real)
    (term,) = rules.required_terms
    assert [r.key for r in term.expressions] == [
        "hub.jupyter.org/node-purpose",
        "nvidia.com/gpu.product",
    ]
    assert {t.key for t in rules.tolerations} == {
        "hub.jupyter.org/dedicated",
        "hub.jupyter.org_dedicated",
        "nvidia.com/gpu",
    }
    assert pod_demand(real) == {"cpu": 4000, "memory": 32 * 1024**3, "nvidia.com/gpu": 2}


def test_our_term_narrows_every_configured_term():
    zone_a = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
    pool = {"matchExpressions": [{"key": "pool", "operator": "Exists"}], "matchFields": []}
    pin = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
    assert and_terms([zone_a, pool], [pin]) == [
        {**zone_a, "matchFields": pin["matchFields"]},
        {"matchExpressions": pool["matchExpressions"], "matchFields": pin["matchFields"]},
    ]
    assert and_terms([], [pin]) == [pin]
    assert and_terms([zone_a], []) == [zone_a]


async def test_demand_counts_what_the_api_server_defaults_and_the_init_peak():
    """A container with limits only is given requests equal to them when it is created; an
    init container counts with the sidecars started before it."""
    spawner = make_spawner(**CONFIGURATIONS["containers"])
    no_guarantee = lab_menu(settings=MenuSettings(cpu_guarantee_ratio=0.0))
    choice = check_choice(CHOICES["cpu"], no_guarantee)
    demand = pod_demand(spawner.pod_template().spec(choice))
    # max(4 (the limit) + 0.1 proxy + 0.05 sidecar, 6 for the init container that runs
    # before the sidecar starts) = 6
    assert demand["cpu"] == 6000
    small = lab_menu().settings
    choice = check_choice(
        {**CHOICES["cpu"], "cpu": "16", "image": "base"}, _with_base(lab_menu(settings=small))
    )
    # 16 x 0.5 + 0.1 + 0.05 = 8.15 is more than the init peak
    assert pod_demand(spawner.pod_template().spec(choice))["cpu"] == 8150


def _with_base(menu):
    menu.images.append(
        {
            "name": "base",
            "display_name": "Base",
            "image": "quay.io/jupyter/base-notebook:2025-08-18",
            "metadata": {},
        }
    )
    return menu
