"""shaping.spawner_overrides and the pod manifests kubespawner makes from them: every one
must pass the Kubernetes 1.32 schema and the apiserver's validation (kubesim's admission)."""

from __future__ import annotations

import pytest
from kubernetes_asyncio.client import ApiClient
from tornado import web

from tests.kubesim.admission import default_pod, validate
from tests.kubesim.generator import make_node
from tests.spawner_unit.cluster import (
    GIB,
    FakeAvailability,
    apply_options,
    lab_menu,
    lab_nodes,
    lab_pods,
    make_spawner,
    mig_node,
    pod,
    renamed_time_sliced_node,
)
from thinkube_core.scheduling import pod_demand
from thinkube_spawner.menu import MenuSettings, check_choice, demand_for, fits
from thinkube_spawner.shaping import (
    PodSettings,
    SharedVolume,
    StorageSettings,
    gpu_tolerations,
    merge_by_name,
    spawner_overrides,
)

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists"}  # any value, any effect


def pinned_to(node: str) -> list[dict]:
    return [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]


VOLUMES = [
    {"name": "thinkube-notebooks", "persistentVolumeClaim": {"claimName": "thinkube-notebooks"}},
    {"name": "thinkube-datasets", "persistentVolumeClaim": {"claimName": "thinkube-datasets"}},
    {"name": "thinkube-models", "persistentVolumeClaim": {"claimName": "thinkube-models"}},
    {"name": "scratch", "emptyDir": {"sizeLimit": "100Gi"}},
]
MOUNTS = [
    {"name": "thinkube-notebooks", "mountPath": "/home/jovyan/notebooks"},
    {"name": "thinkube-datasets", "mountPath": "/datasets"},
    {"name": "thinkube-models", "mountPath": "/models"},
    {"name": "scratch", "mountPath": "/home/jovyan/scratch"},
]
MIG_KEY = "gpu:nvidia-a100-sxm4-80gb-mig-1g-10gb@mig-1g-10gb"
SHARED_KEY = "gpu:nvidia-geforce-rtx-3090@gpu-shared"


def special_nodes():
    return [*lab_nodes(), mig_node("mig-1", 20), renamed_time_sliced_node("ts-renamed", 21)]


@pytest.fixture
def menu():
    return lab_menu(nodes=special_nodes())


# --- the trait values --------------------------------------------------------------------


def test_a_cpu_choice(menu):
    choice = check_choice({"image": "scipy", "cpu": "4", "memory": "8"}, menu)
    assert spawner_overrides(choice, PodSettings()) == {
        "image": "quay.io/jupyter/scipy-notebook:2025-08-18",
        "image_pull_policy": "IfNotPresent",
        "node_affinity_required": [],
        "tolerations": [],
        "cpu_limit": 4.0,
        "cpu_guarantee": 2.0,
        "mem_limit": 8 * GIB,
        "mem_guarantee": 8 * GIB,
        "extra_resource_limits": {},
        "extra_resource_guarantees": {},
        "volumes": VOLUMES,
        "volume_mounts": MOUNTS,
    }


def test_a_gpu_model_choice(menu):
    choice = check_choice(
        {
            "image": "pytorch-cuda",
            "where": "gpu:nvidia-a100-sxm4-80gb",
            "cpu": "8",
            "memory": "32",
            "gpus": "2",
        },
        menu,
    )
    overrides = spawner_overrides(choice, PodSettings())
    assert overrides["image"] == "quay.io/jupyter/pytorch-notebook:cuda12-2025-08-18"
    assert "node_selector" not in overrides  # the admin's stays as configured
    assert overrides["node_affinity_required"] == [
        {
            "matchExpressions": [
                {
                    "key": "nvidia.com/gpu.product",
                    "operator": "In",
                    "values": ["NVIDIA-A100-SXM4-80GB"],
                }
            ]
        }
    ]
    assert overrides["tolerations"] == [GPU_TOLERATION]
    assert (overrides["cpu_limit"], overrides["cpu_guarantee"]) == (8.0, 4.0)
    assert (overrides["mem_limit"], overrides["mem_guarantee"]) == (32 * GIB, 32 * GIB)
    assert overrides["extra_resource_limits"] == {"nvidia.com/gpu": "2"}
    assert overrides["extra_resource_guarantees"] == overrides["extra_resource_limits"]


def test_a_pinned_gpu_node(menu):
    choice = check_choice({"image": "pytorch-cuda", "where": "node:gpu-node-3", "gpus": "1"}, menu)
    overrides = spawner_overrides(choice, PodSettings())
    # pinned by name (a node's hostname label need not be its name)
    assert overrides["node_affinity_required"] == pinned_to("gpu-node-3")
    assert overrides["tolerations"] == [GPU_TOLERATION]
    assert (
        overrides["extra_resource_limits"]
        == overrides["extra_resource_guarantees"]
        == {"nvidia.com/gpu": "1"}
    )
    # a CPU-only server on a GPU node still needs the toleration to get there, and no GPU
    cpu_only = spawner_overrides(check_choice({"where": "node:gpu-a"}, menu), PodSettings())
    assert (cpu_only["node_affinity_required"], cpu_only["tolerations"]) == (
        pinned_to("gpu-a"),
        [GPU_TOLERATION],
    )
    assert cpu_only["extra_resource_limits"] == cpu_only["extra_resource_guarantees"] == {}


def test_a_pinned_cpu_node(menu):
    overrides = spawner_overrides(
        check_choice({"where": "node:cpu-node-1", "cpu": "1", "memory": "2"}, menu), PodSettings()
    )
    assert (overrides["node_affinity_required"], overrides["tolerations"]) == (
        pinned_to("cpu-node-1"),
        [],
    )
    assert (overrides["cpu_limit"], overrides["cpu_guarantee"], overrides["mem_limit"]) == (
        1.0,
        0.5,
        2 * GIB,
    )


def test_a_mig_choice_requests_the_mig_resource_and_matches_the_mig_product(menu):
    choice = check_choice({"image": "pytorch-cuda", "where": MIG_KEY, "gpus": "2"}, menu)
    overrides = spawner_overrides(choice, PodSettings())
    assert overrides["node_affinity_required"] == [
        {
            "matchExpressions": [
                {
                    "key": "nvidia.com/mig-1g.10gb.product",
                    "operator": "In",
                    "values": ["NVIDIA-A100-SXM4-80GB-MIG-1g.10gb"],
                }
            ]
        }
    ]
    assert (
        overrides["extra_resource_limits"]
        == overrides["extra_resource_guarantees"]
        == {"nvidia.com/mig-1g.10gb": "2"}
    )
    assert overrides["tolerations"] == [GPU_TOLERATION]


def test_time_sliced_choices_request_the_advertised_resource(menu):
    renamed = spawner_overrides(
        check_choice({"image": "pytorch-cuda", "where": SHARED_KEY, "gpus": "1"}, menu),
        PodSettings(),
    )
    assert (
        renamed["extra_resource_limits"]
        == renamed["extra_resource_guarantees"]
        == {"nvidia.com/gpu.shared": "1"}
    )
    assert renamed["node_affinity_required"][0]["matchExpressions"] == [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-GeForce-RTX-3090"]}
    ]
    suffixed = spawner_overrides(
        check_choice(
            {"image": "pytorch-cuda", "where": "gpu:nvidia-geforce-rtx-3090-shared", "gpus": "2"},
            menu,
        ),
        PodSettings(),
    )
    assert suffixed["extra_resource_limits"] == {"nvidia.com/gpu": "2"}
    assert suffixed["node_affinity_required"][0]["matchExpressions"][0]["values"] == [
        "NVIDIA-GeForce-RTX-3090-SHARED"
    ]


def test_the_guarantee_ratios_shape_the_requests():
    menu = lab_menu(settings=MenuSettings(cpu_guarantee_ratio=0.25, mem_guarantee_ratio=0.5))
    overrides = spawner_overrides(check_choice({"cpu": "4", "memory": "8"}, menu), PodSettings())
    assert (overrides["cpu_limit"], overrides["cpu_guarantee"]) == (4.0, 1.0)
    assert (overrides["mem_limit"], overrides["mem_guarantee"]) == (8 * GIB, 4 * GIB)


def test_the_image_pull_policy_comes_from_the_catalog(menu):
    menu.images[0] = dict(menu.images[0], pull_policy="Always")
    assert spawner_overrides(check_choice({}, menu), PodSettings())["image_pull_policy"] == "Always"
    menu.images[0] = {k: v for k, v in menu.images[0].items() if k != "pull_policy"}
    assert (
        spawner_overrides(check_choice({}, menu), PodSettings())["image_pull_policy"]
        == "IfNotPresent"
    )


def test_storage_is_configurable(menu):
    choice = check_choice({}, menu)
    storage = StorageSettings(
        shared=(SharedVolume("lab-datasets", "/data", read_only=True),),
        scratch_path="/scratch",
        scratch_size_limit="20Gi",
    )
    overrides = spawner_overrides(choice, PodSettings(storage))
    assert overrides["volumes"] == [
        {"name": "lab-datasets", "persistentVolumeClaim": {"claimName": "lab-datasets"}},
        {"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}},
    ]
    assert overrides["volume_mounts"] == [
        {"name": "lab-datasets", "mountPath": "/data", "readOnly": True},
        {"name": "scratch", "mountPath": "/scratch"},
    ]
    no_scratch = spawner_overrides(choice, PodSettings(StorageSettings(scratch_size_limit=None)))
    assert no_scratch["volumes"] == VOLUMES[:3] and no_scratch["volume_mounts"] == MOUNTS[:3]
    off = spawner_overrides(choice, PodSettings(StorageSettings(enabled=False)))
    assert (off["volumes"], off["volume_mounts"]) == ([], [])


def test_merge_by_name_keeps_the_admins_entries_and_replaces_ours():
    configured = [
        {"name": "scratch", "emptyDir": {}},
        {"name": "home", "persistentVolumeClaim": {"claimName": "claim-alice"}},
        "not-a-dict",
    ]
    ours = [{"name": "scratch", "emptyDir": {"sizeLimit": "100Gi"}}]
    assert merge_by_name(configured, ours) == [
        {"name": "home", "persistentVolumeClaim": {"claimName": "claim-alice"}},
        "not-a-dict",
        {"name": "scratch", "emptyDir": {"sizeLimit": "100Gi"}},
    ]
    tolerations = [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "x"},
        {"key": "team", "operator": "Exists"},
    ]
    assert merge_by_name(tolerations, gpu_tolerations(), "key") == [
        {"key": "team", "operator": "Exists"},
        GPU_TOLERATION,
    ]
    assert merge_by_name([], []) == []


# --- the pod manifests -------------------------------------------------------------------


async def pod_manifest(spawner, overrides: dict) -> dict:
    for name, value in overrides.items():
        setattr(spawner, name, value)
    pod_object = await spawner.get_pod_manifest()
    async with ApiClient() as api:
        return api.sanitize_for_serialization(pod_object)


def admitted(manifest: dict) -> dict:
    stored = default_pod(manifest)
    causes = validate(stored, "Pod", "v1")
    assert causes == [], [str(c) for c in causes]
    return stored


def notebook(manifest: dict) -> dict:
    (container,) = manifest["spec"]["containers"]
    return container


CHOICES = {
    "cpu": {"image": "scipy", "cpu": "4", "memory": "8"},
    "gpu model": {
        "image": "pytorch-cuda",
        "where": "gpu:nvidia-a100-sxm4-80gb",
        "cpu": "8",
        "memory": "32",
        "gpus": "4",
    },
    "pinned gpu node": {
        "image": "pytorch-cuda",
        "where": "node:gpu-node-3",
        "cpu": "2",
        "memory": "16",
        "gpus": "1",
    },
    "pinned gpu node, no gpu": {
        "image": "minimal",
        "where": "node:gpu-a",
        "cpu": "1",
        "memory": "2",
    },
    "mig": {"image": "pytorch-cuda", "where": MIG_KEY, "cpu": "4", "memory": "16", "gpus": "1"},
    "time-sliced, renamed": {
        "image": "pytorch-cuda",
        "where": SHARED_KEY,
        "cpu": "2",
        "memory": "8",
        "gpus": "2",
    },
}


@pytest.mark.parametrize("name", list(CHOICES))
async def test_every_pod_manifest_passes_kubernetes_validation(menu, name):
    choice = check_choice(CHOICES[name], menu)
    spawner = make_spawner()
    manifest = admitted(
        await pod_manifest(spawner, spawner_overrides(choice, spawner.pod_settings()))
    )
    container = notebook(manifest)
    assert container["image"] == choice.image["image"]
    resources = container["resources"]
    gpu = choice.placement.gpu_resource
    if choice.gpus:
        assert resources["limits"][gpu] == resources["requests"][gpu] == str(choice.gpus)
    else:
        assert not any(
            k.startswith("nvidia.com/") for k in [*resources["limits"], *resources["requests"]]
        )
    assert [v["name"] for v in manifest["spec"]["volumes"]] == [v["name"] for v in VOLUMES]
    assert container["volumeMounts"] == [
        {"mountPath": m["mountPath"], "name": m["name"]} for m in MOUNTS
    ]


async def test_the_gpu_model_pod_in_full(menu):
    choice = check_choice(CHOICES["gpu model"], menu)
    spawner = make_spawner()
    manifest = admitted(
        await pod_manifest(spawner, spawner_overrides(choice, spawner.pod_settings()))
    )
    spec = manifest["spec"]
    assert spec["affinity"] == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": "nvidia.com/gpu.product",
                                "operator": "In",
                                "values": ["NVIDIA-A100-SXM4-80GB"],
                            }
                        ]
                    }
                ]
            }
        }
    }
    assert "nodeSelector" not in spec
    assert spec["tolerations"][0] == GPU_TOLERATION
    assert notebook(manifest)["resources"] == {
        "limits": {"cpu": 8.0, "memory": 32 * GIB, "nvidia.com/gpu": "4"},
        "requests": {"cpu": 4.0, "memory": 32 * GIB, "nvidia.com/gpu": "4"},
    }
    assert spec["volumes"] == VOLUMES


async def test_the_pinned_node_pod_and_the_mig_pod(menu):
    spawner = make_spawner()
    pinned = admitted(
        await pod_manifest(
            spawner,
            spawner_overrides(
                check_choice(CHOICES["pinned gpu node"], menu), spawner.pod_settings()
            ),
        )
    )
    assert "nodeSelector" not in pinned["spec"]
    assert pinned["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"] == pinned_to("gpu-node-3")
    spawner = make_spawner()
    mig = admitted(
        await pod_manifest(
            spawner, spawner_overrides(check_choice(CHOICES["mig"], menu), spawner.pod_settings())
        )
    )
    terms = mig["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [
        {
            "matchExpressions": [
                {
                    "key": "nvidia.com/mig-1g.10gb.product",
                    "operator": "In",
                    "values": ["NVIDIA-A100-SXM4-80GB-MIG-1g.10gb"],
                }
            ]
        }
    ]
    assert notebook(mig)["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"


async def test_configured_storage_passes_validation_too(menu):
    spawner = make_spawner(
        shared_volumes=[{"claim": "lab-datasets", "mount_path": "/data", "read_only": True}],
        scratch_size_limit=50 * GIB,
        scratch_path="/scratch",
    )
    manifest = admitted(
        await pod_manifest(
            spawner, spawner_overrides(check_choice({}, menu), spawner.pod_settings())
        )
    )
    assert manifest["spec"]["volumes"] == [
        {"name": "lab-datasets", "persistentVolumeClaim": {"claimName": "lab-datasets"}},
        {"name": "scratch", "emptyDir": {"sizeLimit": str(50 * GIB)}},
    ]
    assert notebook(manifest)["volumeMounts"] == [
        {"mountPath": "/data", "name": "lab-datasets", "readOnly": True},
        {"mountPath": "/scratch", "name": "scratch"},
    ]


def test_the_validator_does_reject_a_broken_pod():
    """The checks above mean something: the same validator refuses what the apiserver would."""
    broken = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "jupyter-alice"},
        "spec": {
            "containers": [
                {
                    "name": "notebook",
                    "image": "quay.io/jupyter/base-notebook:2025-08-18",
                    # a GPU request without an equal limit
                    "resources": {"requests": {"nvidia.com/gpu": "1"}},
                }
            ],
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "lots"}}],
        },
    }
    assert validate(default_pod(broken), "Pod", "v1") != []


# --- load_user_options: the spawner applies a checked choice ------------------------------


def spawn_message(err: web.HTTPError) -> str:
    return getattr(err, "jupyterhub_message", None) or err.log_message


async def test_load_user_options_applies_the_choice_to_the_pod():
    spawner = make_spawner(FakeAvailability(nodes=special_nodes()))
    spawner.user_options = {"profile": "thinkube", **CHOICES["mig"]}
    await apply_options(spawner)
    assert (
        spawner.extra_resource_limits
        == spawner.extra_resource_guarantees
        == {"nvidia.com/mig-1g.10gb": "1"}
    )
    assert (spawner.cpu_limit, spawner.cpu_guarantee, spawner.mem_limit) == (4.0, 2.0, 16 * GIB)
    assert spawner.thinkube_choice.placement.key == MIG_KEY
    admitted(await pod_manifest(spawner, {}))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"where": "node:nope"}, "There is no schedulable node named 'nope'."),
        ({"cpu": "1000"}, "CPUs must be one of 1, 2, 4, 8, 16, 32; got '1000'."),
        ({"gpus": "-1"}, "GPUs must be one of 0, 1, 2, 4, 8; got '-1'."),
        ({"gpus": "1; rm -rf /"}, "GPUs must be one of 0, 1, 2, 4, 8; got '1; rm -rf /'."),
        (
            {"where": "gpu:x,nvidia.com/gpu.product notin (a)"},
            "Unknown placement 'gpu:x,nvidia.com/gpu.product notin (a)'.",
        ),
        ({"profile": "gpu-large"}, "Unknown profile 'gpu-large': this hub offers 'thinkube'."),
        (
            {"image--unlisted-choice": "evil/miner:latest"},
            "Unknown server option(s): image--unlisted-choice.",
        ),
        (
            {"where": "node:gpu-l4"},
            "gpu-l4 has no room for 1 CPU and 8 GiB (needs 1 CPU, 0 free).",
        ),
    ],
)
async def test_load_user_options_rejects_with_the_message_and_changes_nothing(options, message):
    spawner = make_spawner()
    before = (spawner.image, spawner.node_selector, spawner.extra_resource_limits, spawner.volumes)
    spawner.user_options = options
    with pytest.raises(web.HTTPError) as caught:
        await apply_options(spawner)
    assert spawn_message(caught.value) == message
    assert (
        spawner.image,
        spawner.node_selector,
        spawner.extra_resource_limits,
        spawner.volumes,
    ) == before


async def test_a_choice_that_filled_up_since_the_form_is_a_capacity_error():
    pods = [p for p in lab_pods() if p["metadata"]["name"] != "train-big"]
    availability = FakeAvailability(pods=pods)
    spawner = make_spawner(availability)
    await spawner.get_options_form()  # the form: gpu-a has 4 free
    availability.pods = lab_pods()  # meanwhile train-big took them
    spawner.user_options = {
        "profile": "thinkube",
        "image": "pytorch-cuda",
        "where": "node:gpu-a",
        "gpus": "2",
    }
    with pytest.raises(web.HTTPError) as caught:
        await apply_options(spawner)
    assert spawn_message(caught.value) == (
        "gpu-a has no room for 1 CPU and 8 GiB with 2 GPUs (needs 2 GPUs, 0 free). "
        "4 are free on gpu-b."
    )
    assert caught.value.status_code == 409
    assert availability.calls == 2  # the check at submit fetched fresh data


@pytest.mark.parametrize(
    "options", [{"cpu": 4, "memory": 8}, {"cpu": "4.0"}, {"cpu": "4", "gpus": " 0"}]
)
async def test_load_user_options_takes_numbers_as_the_rest_api_sends_them(options):
    spawner = make_spawner()
    spawner.user_options = {"image": "scipy", **options}
    await apply_options(spawner)
    assert (spawner.cpu_limit, spawner.mem_limit) == (4.0, 8 * GIB)


async def test_the_pod_lands_where_the_menu_said_there_was_room():
    """The pod asks for no more than the node document says is free where the menu found room."""
    nodes = [make_node("cpu-1", 32, 128, None, 1), mig_node("mig-1", 2)]
    pods = [pod("mig-1", "a", "60", "400Gi", gpus=6, resource="nvidia.com/mig-1g.10gb")]
    menu = lab_menu(nodes=nodes, pods=pods)
    choice = check_choice(
        {"image": "pytorch-cuda", "where": MIG_KEY, "cpu": "4", "memory": "32", "gpus": "1"}, menu
    )
    spawner = make_spawner()
    manifest = admitted(
        await pod_manifest(spawner, spawner_overrides(choice, spawner.pod_settings()))
    )
    demand = pod_demand(manifest["spec"])
    (row,) = fits(choice.placement, demand_for(menu.settings, choice.placement, 4, 32, 1))
    assert row["node"] == "mig-1"
    assert demand == {"cpu": 2000, "memory": 32 * GIB, "nvidia.com/mig-1g.10gb": 1}
    assert all(units <= row["free"][name] for name, units in demand.items())
    assert row["free"]["nvidia.com/mig-1g.10gb"] == 1
