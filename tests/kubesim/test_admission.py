"""Admission: schema decoding, Pod defaulting and the apiserver's validation messages."""

import copy
import time

import pytest

from tests.kubesim.admission import (
    Cause,
    default_pod,
    invalid_message,
    pod_qos_class,
    quantity_string,
    request_error,
    validate,
)


def spawner_pod(**resources):
    """A pod shaped like the one kubespawner creates, with server-set metadata present."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "jupyter-alice",
            "namespace": "jhub",
            "labels": {
                "app": "jupyterhub",
                "component": "singleuser-server",
                "hub.jupyter.org/username": "alice",
            },
            "annotations": {"hub.jupyter.org/username": "alice"},
            "uid": "5f0c1d2e-0000-4000-8000-000000000001",
            "resourceVersion": "1234",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "managedFields": [
                {
                    "manager": "kubespawner",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {}},
                }
            ],
        },
        "spec": {
            "containers": [
                {
                    "name": "notebook",
                    "image": "quay.io/jupyter/base-notebook:2025-01-01",
                    "args": ["jupyterhub-singleuser"],
                    "env": [{"name": "JUPYTERHUB_USER", "value": "alice"}],
                    "ports": [{"containerPort": 8888, "name": "notebook-port"}],
                    "resources": resources,
                    "volumeMounts": [{"name": "home", "mountPath": "/home/jovyan"}],
                }
            ],
            "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": "claim-alice"}}],
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "restartPolicy": "OnFailure",
            "automountServiceAccountToken": False,
        },
    }


def admit(pod):
    return validate(default_pod(pod), "Pod", "v1")


# -- valid objects ----------------------------------------------------------------------------


def test_a_kubespawner_gpu_pod_with_server_set_metadata_is_admitted():
    pod = spawner_pod(
        limits={"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"},
        requests={"cpu": "500m", "memory": "1Gi"},
    )
    assert admit(pod) == []


@pytest.mark.parametrize(
    ("kind", "api_version", "obj"),
    [
        ("Namespace", "v1", {"metadata": {"name": "jhub"}}),
        (
            "Service",
            "v1",
            {
                "metadata": {"name": "hub"},
                "spec": {"ports": [{"port": 8081, "targetPort": "http"}]},
            },
        ),
        ("ConfigMap", "v1", {"metadata": {"generateName": "cfg-"}, "data": {"a": "b"}}),
        (
            "Node",
            "v1",
            {
                "metadata": {"name": "gpu-node-1"},
                "status": {"capacity": {"nvidia.com/gpu": "8", "memory": "512Gi"}},
            },
        ),
        (
            "Job",
            "batch/v1",
            {
                "metadata": {"name": "j"},
                "spec": {
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "c", "image": "busybox"}],
                        }
                    }
                },
            },
        ),
    ],
)
def test_ordinary_objects_of_other_kinds_are_admitted(kind, api_version, obj):
    assert validate({"apiVersion": api_version, "kind": kind, **obj}, kind, api_version) == []


# -- extended resources and limits ------------------------------------------------------------


def test_gpu_request_must_equal_the_limit():
    pod = spawner_pod(limits={"nvidia.com/gpu": "0"}, requests={"nvidia.com/gpu": "1"})
    causes = admit(pod)
    assert causes == [
        Cause(
            "FieldValueInvalid",
            'Invalid value: "1": must be equal to nvidia.com/gpu limit of 0',
            "spec.containers[0].resources.requests",
        )
    ]
    assert invalid_message("Pod", "jupyter-alice", causes) == (
        'Pod "jupyter-alice" is invalid: spec.containers[0].resources.requests: '
        'Invalid value: "1": must be equal to nvidia.com/gpu limit of 0'
    )


def test_gpu_request_without_limit_is_rejected():
    causes = admit(spawner_pod(requests={"nvidia.com/gpu": "1"}))
    assert causes == [
        Cause(
            "FieldValueRequired",
            "Required value: Limit must be set for non overcommitable resources",
            "spec.containers[0].resources.limits",
        )
    ]


def test_gpu_limit_alone_defaults_the_request_and_is_admitted():
    pod = default_pod(spawner_pod(limits={"nvidia.com/gpu": "2"}))
    assert pod["spec"]["containers"][0]["resources"]["requests"] == {"nvidia.com/gpu": "2"}
    assert validate(pod, "Pod", "v1") == []


def test_fractional_gpu_must_be_an_integer():
    causes = admit(spawner_pod(limits={"nvidia.com/gpu": "500m"}))
    # The apiserver prints the Go struct of the quantity here (%#v of a resource.Quantity).
    quantity = (
        "resource.Quantity{i:resource.int64Amount{value:500, scale:-3}, "
        'd:resource.infDecAmount{Dec:(*inf.Dec)(nil)}, s:"500m", Format:"DecimalSI"}'
    )
    assert causes == [
        Cause(
            "FieldValueInvalid",
            f"Invalid value: {quantity}: must be an integer",
            f"spec.containers[0].resources.{key}[nvidia.com/gpu]",
        )
        for key in ("limits", "requests")
    ]


def test_cpu_and_memory_requests_may_not_exceed_limits():
    causes = admit(
        spawner_pod(
            limits={"cpu": "1", "memory": "1Gi"}, requests={"cpu": "1500m", "memory": "1024Mi"}
        )
    )
    assert [str(cause) for cause in causes] == [
        'spec.containers[0].resources.requests: Invalid value: "1500m": must be less than or equal to cpu limit of 1'
    ]


def test_negative_and_unknown_resources():
    causes = validate(spawner_pod(limits={"gpu": "1"}, requests={"memory": "-1Gi"}), "Pod", "v1")
    assert [str(cause) for cause in causes] == [
        'spec.containers[0].resources.limits[gpu]: Invalid value: "gpu": must be a standard resource type or fully qualified',
        'spec.containers[0].resources.limits[gpu]: Invalid value: "gpu": must be a standard resource for containers',
        'spec.containers[0].resources.requests[memory]: Invalid value: "-1Gi": must be greater than or equal to 0',
    ]


def test_several_causes_are_joined_in_brackets_and_deduplicated():
    first = Cause("FieldValueRequired", "Required value", "spec.containers[0].image")
    second = Cause("FieldValueDuplicate", 'Duplicate value: "a"', "spec.containers[1].name")
    assert invalid_message("Job", "j", [first, second, first], group="batch") == (
        'Job.batch "j" is invalid: [spec.containers[0].image: Required value, '
        'spec.containers[1].name: Duplicate value: "a"]'
    )


# -- names, containers, volumes ---------------------------------------------------------------


def test_pod_name_must_be_a_dns_subdomain():
    pod = spawner_pod()
    pod["metadata"]["name"] = "Jupyter_Alice"
    assert [str(cause) for cause in admit(pod)] == [
        'metadata.name: Invalid value: "Jupyter_Alice": a lowercase RFC 1123 subdomain must consist of '
        "lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
        "character (e.g. 'example.com', regex used for validation is "
        "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    ]


def test_generate_name_alone_is_enough_and_may_end_in_a_dash():
    pod = spawner_pod()
    pod["metadata"] = {"generateName": "jupyter-alice-"}
    assert admit(pod) == []
    pod["metadata"] = {}
    assert [str(c) for c in admit(pod)] == [
        "metadata.name: Required value: name or generateName is required"
    ]


def test_namespace_and_service_names_are_labels():
    namespace = validate({"metadata": {"name": "Team-A"}}, "Namespace", "v1")
    assert namespace[0].message.startswith(
        'Invalid value: "Team-A": a lowercase RFC 1123 label must consist of'
    )
    service = validate({"metadata": {"name": "1hub"}}, "Service", "v1")
    assert service[0].message.startswith('Invalid value: "1hub": a DNS-1035 label must consist of')


def test_container_rules():
    pod = spawner_pod()
    pod["spec"]["containers"] += [
        {"name": "notebook", "image": "x"},
        {
            "name": "helper",
            "image": "",
            "volumeMounts": [{"name": "missing", "mountPath": "/data"}],
        },
    ]
    assert [str(cause) for cause in admit(pod)] == [
        'spec.containers[1].name: Duplicate value: "notebook"',
        "spec.containers[2].image: Required value",
        'spec.containers[2].volumeMounts[0].name: Not found: "missing"',
    ]


def test_a_pod_needs_containers_each_with_a_name():
    pod = spawner_pod()
    pod["spec"]["containers"] = []
    assert [str(c) for c in admit(pod)] == ["spec.containers: Required value"]
    pod["spec"]["containers"] = [{"image": "x"}]
    assert [str(c) for c in admit(pod)] == ["spec.containers[0].name: Required value"]


def test_unsupported_enum_values_and_job_restart_policy():
    pod = spawner_pod()
    pod["spec"]["restartPolicy"] = "Sometimes"
    assert [str(c) for c in admit(pod)] == [
        'spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never"'
    ]
    job = {
        "metadata": {"name": "j"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
    }
    assert [str(c) for c in validate(job, "Job", "batch/v1")] == [
        'spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: "OnFailure", "Never"'
    ]


# -- decoding: schema, types, quantities -------------------------------------------------------


def test_unknown_fields_are_rejected_as_under_strict_field_validation():
    pod = spawner_pod()
    pod["spec"]["containers"][0]["gpus"] = 1
    causes = validate(pod, "Pod", "v1")
    assert [(c.field, c.origin) for c in causes] == [("spec.containers[0].gpus", "unknown-field")]
    assert request_error("Pod", "v1", "jupyter-alice", causes) == (
        400,
        "BadRequest",
        'Pod in version "v1" cannot be handled as a Pod: strict decoding error: unknown field "spec.containers[0].gpus"',
    )


def test_wrong_json_types_fail_decoding():
    pod = spawner_pod()
    pod["spec"]["containers"][0]["ports"][0]["containerPort"] = "8888"
    assert request_error("Pod", "v1", "x", validate(pod, "Pod", "v1")) == (
        400,
        "BadRequest",
        'Pod in version "v1" cannot be handled as a Pod: json: cannot unmarshal string into Go struct '
        "field ContainerPort.spec.containers.ports.containerPort of type int32",
    )


def test_every_quantity_must_parse():
    pod = spawner_pod(limits={"memory": "8 GB"})
    causes = validate(pod, "Pod", "v1")
    assert [(c.field, c.origin) for c in causes] == [
        ("spec.containers[0].resources.limits[memory]", "decode")
    ]
    assert causes[0].message == (
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )
    pod = spawner_pod()
    pod["spec"]["volumes"] = [{"name": "home", "emptyDir": {"sizeLimit": "lots"}}]
    assert [c.field for c in validate(pod, "Pod", "v1")] == ["spec.volumes[0].emptyDir.sizeLimit"]


def test_unknown_kinds_only_get_metadata_checks():
    assert (
        validate({"metadata": {"name": "w"}, "spec": {"anything": 1}}, "Widget", "example.com/v1")
        == []
    )


# -- defaulting -------------------------------------------------------------------------------


def test_default_pod_fills_in_what_the_apiserver_does_and_leaves_the_input_alone():
    pod = spawner_pod(limits={"cpu": "2", "memory": "4Gi"})
    original = copy.deepcopy(pod)
    defaulted = default_pod(pod)
    assert pod == original
    spec, container = defaulted["spec"], defaulted["spec"]["containers"][0]
    assert {
        key: spec[key]
        for key in ("restartPolicy", "dnsPolicy", "schedulerName", "terminationGracePeriodSeconds")
    } == {
        "restartPolicy": "OnFailure",  # set by the client, kept
        "dnsPolicy": "ClusterFirst",
        "schedulerName": "default-scheduler",
        "terminationGracePeriodSeconds": 30,
    }
    assert spec["enableServiceLinks"] is True
    assert spec["serviceAccountName"] == spec["serviceAccount"] == "default"
    assert spec["priority"] == 0 and spec["preemptionPolicy"] == "PreemptLowerPriority"
    assert spec["tolerations"][1:] == [
        {
            "key": "node.kubernetes.io/not-ready",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 300,
        },
        {
            "key": "node.kubernetes.io/unreachable",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 300,
        },
    ]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "File"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["ports"][0]["protocol"] == "TCP"
    assert defaulted["status"] == {"phase": "Pending", "qosClass": "Guaranteed"}


def test_defaulted_pods_share_no_objects():
    first, second = default_pod(spawner_pod()), default_pod(spawner_pod())
    first["spec"]["securityContext"]["runAsUser"] = 1000
    assert second["spec"]["securityContext"] == {}


def test_explicit_requests_are_not_overwritten_by_limits():
    pod = default_pod(spawner_pod(limits={"cpu": "2", "memory": "4Gi"}, requests={"cpu": "1"}))
    assert pod["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "1", "memory": "4Gi"}
    assert pod["status"]["qosClass"] == "Burstable"


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("jupyter/base-notebook", "Always"),
        ("jupyter/base-notebook:latest", "Always"),
        ("localhost:5000/notebook", "Always"),
        ("jupyter/base-notebook:2025-01-01", "IfNotPresent"),
        ("jupyter/base-notebook@sha256:" + "a" * 64, "IfNotPresent"),
    ],
)
def test_image_pull_policy_defaults_on_the_tag(image, policy):
    pod = spawner_pod()
    pod["spec"]["containers"][0]["image"] = image
    assert default_pod(pod)["spec"]["containers"][0]["imagePullPolicy"] == policy


@pytest.mark.parametrize(
    ("resources", "qos"),
    [
        ({}, "BestEffort"),
        ({"limits": {"nvidia.com/gpu": "1"}}, "BestEffort"),  # only cpu and memory count
        ({"requests": {"cpu": "100m"}}, "Burstable"),
        ({"limits": {"cpu": "1", "memory": "1Gi"}}, "Guaranteed"),
        (
            {
                "limits": {"cpu": "1", "memory": "1Gi"},
                "requests": {"cpu": "1000m", "memory": "1024Mi"},
            },
            "Guaranteed",
        ),
        ({"limits": {"cpu": "1"}}, "Burstable"),
        ({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "0.5"}}, "Burstable"),
    ],
)
def test_qos_class(resources, qos):
    assert default_pod(spawner_pod(**resources))["status"]["qosClass"] == qos
    assert pod_qos_class(default_pod(spawner_pod(**resources))) == qos


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("2000m", "2"),
        ("0.5", "500m"),
        ("1024Mi", "1Gi"),
        ("1536Mi", "1536Mi"),
        ("1.5Ki", "1536"),
        ("1500000", "1500k"),
        ("1e3", "1e3"),
        (2, "2"),
        ("0", "0"),
    ],
)
def test_quantities_print_in_canonical_form(raw, canonical):
    assert quantity_string(raw) == canonical


def test_validating_a_typical_pod_takes_well_under_five_milliseconds():
    pod = default_pod(spawner_pod(limits={"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"}))
    for _ in range(20):  # warm-up: schemas load and validators compile once
        validate(pod, "Pod", "v1")
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        validate(pod, "Pod", "v1")
    per_pod = (time.perf_counter() - started) / rounds
    assert per_pod < 0.005, f"{per_pod * 1000:.2f} ms per pod"
