"""A job as Kubernetes objects and back (pure), label values, the kept log tail, and the
store's output column on a database made before it existed."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from sqlalchemy import create_engine, text

from hub_service.jobs.artifact_files import user_folder
from hub_service.jobs.kube import OutputTail, _stored_lines
from hub_service.jobs.manager import stored_request
from hub_service.jobs.manifests import (
    ARTIFACTS_RUNNER,
    ending_of,
    entry_from_job,
    job_manifest,
    job_record,
    pending_positions,
    pinned_node,
    script_config_map,
    script_key,
)
from hub_service.jobs.spec import JobRequest
from hub_service.jobs.store import JobStore
from thinkube_core.job_labels import label_value

LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")

REQUEST = JobRequest(
    script="print('hi')\n",
    script_name="my train.py",
    expected_s=600,
    gpus=2,
    gpu_model="NVIDIA-L4",
    gpu_resource="nvidia.com/gpu",
    cpu=1.5,
    memory=4 << 30,
    image={"name": "torch", "image": "example.org/torch:1", "pull_policy": "IfNotPresent"},
    name="run 1",
    project="vision",
    metadata={"competition_id": "c7"},
)
ENTRY = {
    "id": "j-0123456789ab",
    "kind": "job",
    "user": "Ana María@example.org",
    "name": "run 1",
    "project": "vision",
    "priority": 0,
    "metadata": {"competition_id": "c7"},
    "expected_s": 600.0,
    "submitted_at": 1700000000.0,
}


def manifest(**kwargs):
    options = {"deadline_s": 1200.4, "ttl_s": 300, "run_as_user": 1000, "python": "python3"}
    options.update(kwargs)
    node = options.pop("node", "gpu-7")
    return job_manifest(ENTRY, REQUEST, stored_request(REQUEST), node, "jobs", **options)


def test_label_values_are_kept_when_valid_and_slugged_with_a_hash_otherwise():
    assert label_value("alice") == "alice"
    assert label_value("") == ""
    assert label_value("a" * 63) == "a" * 63
    odd = ["Ana María@example.org", "-x-", "a" * 64, "日本", "a b", "x.", "a" * 63 + "b"]
    values = [label_value(name) for name in odd]
    for name, value in zip(odd, values, strict=True):
        assert len(value) <= 63 and LABEL_VALUE.fullmatch(value), (name, value)
        assert re.search(r"(^|---)[0-9a-f]{8}$", value)
    assert values[0].startswith("Ana-Mar-a-example.org---")
    assert values[3] == values[3][-8:]  # nothing readable left: the hash alone
    assert len(set(values)) == len(values)
    assert label_value("a" * 64) != label_value("a" * 63 + "b")  # same slug, other hash


def test_the_job_runs_the_script_pinned_to_the_node_once_within_its_deadline():
    job = manifest()
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert job["metadata"]["name"] == "thinkube-j-0123456789ab"
    assert job["metadata"]["namespace"] == "jobs"
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 1201  # whole seconds, never shorter
    assert spec["ttlSecondsAfterFinished"] == 300
    assert "suspend" not in spec
    labels = {
        "app.kubernetes.io/managed-by": "thinkube",
        "thinkube.io/job-id": "j-0123456789ab",
        "thinkube.io/user": label_value("Ana María@example.org"),
        "thinkube.io/project": "vision",
    }
    assert job["metadata"]["labels"] == labels
    assert spec["template"]["metadata"]["labels"] == labels
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    [container] = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["image"] == "example.org/torch:1"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["command"] == ["python3", "/job/my_train.py"]
    assert {"name": "PYTHONUNBUFFERED", "value": "1"} in container["env"]
    # No models claim: the artifacts folder is scratch, gone with the pod.
    assert {"name": "THINKUBE_ARTIFACTS_DIR", "value": "/artifacts"} in container["env"]
    assert container["volumeMounts"] == [
        {"name": "script", "mountPath": "/job", "readOnly": True},
        {"name": "artifacts", "mountPath": "/artifacts"},
    ]
    assert pod["volumes"] == [
        {"name": "script", "configMap": {"name": "thinkube-j-0123456789ab"}},
        {"name": "artifacts", "emptyDir": {}},
    ]
    resources = {"cpu": "1500m", "memory": str(4 << 30), "nvidia.com/gpu": "2"}
    assert container["resources"] == {"requests": resources, "limits": resources}
    assert {"key": "nvidia.com/gpu", "operator": "Exists"} in pod["tolerations"]
    [term] = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term["matchFields"] == [{"key": "metadata.name", "operator": "In", "values": ["gpu-7"]}]
    assert term["matchExpressions"][0]["values"] == ["NVIDIA-L4"]
    assert pinned_node(job) == "gpu-7"


def test_with_a_models_claim_the_job_keeps_its_artifacts_on_it():
    job = manifest(models_claim="thinkube-models")
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    folder = f"/models/jobs/{user_folder(ENTRY['user'])}/j-0123456789ab/"
    assert folder == "/models/jobs/Ana%20Mar%C3%ADa@example.org/j-0123456789ab/"
    assert {"name": "THINKUBE_ARTIFACTS_DIR", "value": folder} in container["env"]
    assert {"name": "models", "mountPath": "/models"} in container["volumeMounts"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "thinkube-models"}} in (
        pod["volumes"]
    )
    # The runner makes the folder, then runs the script as `python SCRIPT` would.
    assert container["command"] == ["python3", "-c", ARTIFACTS_RUNNER, "/job/my_train.py"]


def test_a_datasets_claim_is_mounted_read_only_where_training_jobs_read_their_data():
    pod = manifest(datasets_claim="thinkube-datasets")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    mount = {"name": "datasets", "mountPath": "/datasets", "readOnly": True}
    assert mount in container["volumeMounts"]
    claim = {"claimName": "thinkube-datasets", "readOnly": True}
    assert {"name": "datasets", "persistentVolumeClaim": claim} in pod["volumes"]
    without = manifest()["spec"]["template"]["spec"]
    assert "datasets" not in [v["name"] for v in without["volumes"]]


def test_the_runner_makes_the_folder_then_runs_the_script_as_python_would(tmp_path):
    script = tmp_path / "job" / "train.py"
    script.parent.mkdir()
    (script.parent / "helper.py").write_text("VALUE = 42\n")
    script.write_text(
        "import os, sys, helper\n"
        "print(__name__, sys.argv, helper.VALUE)\n"
        "open(os.path.join(os.environ['THINKUBE_ARTIFACTS_DIR'], 'out.txt'), 'w').write('x')\n"
        "raise SystemExit(3)\n"
    )
    artifacts = tmp_path / "models" / "jobs" / "alice" / "j-1"
    done = subprocess.run(
        [sys.executable, "-c", ARTIFACTS_RUNNER, str(script), "--lr", "0.1"],
        env={**os.environ, "THINKUBE_ARTIFACTS_DIR": str(artifacts)},
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == f"__main__ {[str(script), '--lr', '0.1']} 42\n"
    assert (artifacts / "out.txt").read_text() == "x"
    failing = tmp_path / "fails.py"
    failing.write_text("x = 1\nraise ValueError('bad')\n")
    done = subprocess.run(
        [sys.executable, "-c", ARTIFACTS_RUNNER, str(failing)],
        env={**os.environ, "THINKUBE_ARTIFACTS_DIR": "/proc/no/such/place"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "thinkube: no artifacts folder" in done.stderr  # said, and the script still ran
    assert f'File "{failing}", line 2' in done.stderr and "ValueError: bad" in done.stderr


def test_with_kueue_the_job_waits_suspended_in_its_queue_and_is_not_pinned():
    job = manifest(kueue_queue="gpu-jobs", node=None, ttl_s=None)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-jobs"
    assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]
    assert job["spec"]["suspend"] is True
    assert "ttlSecondsAfterFinished" not in job["spec"]
    term = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"][0]
    assert "matchFields" not in term and pinned_node(job) is None


def test_the_script_config_map_is_owned_by_the_job():
    job = {"metadata": {"name": "thinkube-j-0123456789ab", "uid": "u-1"}}
    config_map = script_config_map(ENTRY, REQUEST, "jobs", owner=job)
    assert config_map["data"] == {"my_train.py": "print('hi')\n"}
    assert config_map["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": "thinkube-j-0123456789ab",
            "uid": "u-1",
            "blockOwnerDeletion": True,
        }
    ]
    assert "ownerReferences" not in script_config_map(ENTRY, REQUEST, "jobs")["metadata"]
    for name, key in [("../x.py", "x.py"), ("..", "script.py"), ("a:b.py", "a_b.py")]:
        assert script_key(JobRequest(**{**REQUEST.__dict__, "script_name": name})) == key


def finished(job, kind, reason="", message="", at="2024-05-01T10:00:00Z"):
    return {
        **job,
        "status": {
            "startTime": "2024-05-01T09:00:00Z",
            "conditions": [
                {
                    "type": kind,
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": at,
                }
            ],
        },
    }


def pod_exited(code, node="gpu-7"):
    return {
        "metadata": {"name": "p"},
        "spec": {"nodeName": node},
        "status": {
            "containerStatuses": [{"name": "job", "state": {"terminated": {"exitCode": code}}}]
        },
    }


def test_endings_are_read_from_the_job_conditions_and_the_pod_exit_code():
    job = manifest()
    assert ending_of(job, None) is None
    assert ending_of(finished(job, "Complete", "CompletionsReached"), pod_exited(0)) == (
        0,
        "Completed",
        "",
    )
    assert ending_of(finished(job, "Failed", "BackoffLimitExceeded"), pod_exited(3)) == (
        3,
        "Failed",
        "exit code 3",
    )
    code, reason, message = ending_of(
        finished(job, "Failed", "DeadlineExceeded", "Job was active longer"), pod_exited(143)
    )
    assert (code, reason) == (None, "DeadlineExceeded") and "1201 s" in message
    # a pod gone before its exit code was seen: the Job's own words
    assert ending_of(finished(job, "Failed", "PodFailurePolicy", "Pod p failed"), None) == (
        None,
        "Failed",
        "Pod p failed",
    )


def test_an_entry_is_rebuilt_from_its_job_config_map_and_pod():
    job = manifest()
    job["metadata"]["creationTimestamp"] = "2024-05-01T08:59:59Z"
    config_map = script_config_map(ENTRY, REQUEST, "jobs")
    placement = {"backend": "kubernetes", "job": job["metadata"]["name"]}
    assert job_record(job)["user"] == "Ana María@example.org"

    running = {**job, "status": {"startTime": "2024-05-01T09:00:00Z", "active": 1}}
    entry = entry_from_job(running, config_map, None, placement, now=1.0)
    assert entry["status"] == "running"
    assert entry["node"] == "gpu-7"  # pinned: known before the pod is bound
    assert entry["started_at"] == 1714554000.0
    assert entry["deadline_at"] == 1714554000.0 + 1201
    assert entry["script"] == REQUEST.script
    assert entry["request"] == stored_request(REQUEST)
    for key in ("id", "kind", "user", "name", "project", "metadata", "expected_s", "submitted_at"):
        assert entry[key] == ENTRY[key], key

    done = entry_from_job(finished(job, "Complete"), config_map, pod_exited(0), placement, 1.0)
    assert (done["status"], done["reason"], done["exit_code"]) == ("completed", "Completed", 0)
    assert done["finished_at"] == 1714557600.0

    waiting = manifest(kueue_queue="q", node=None)
    entry = entry_from_job(waiting, None, None, placement, 1.0)
    assert (entry["status"], entry["node"], entry["script"]) == ("queued", None, "")
    assert entry["placement"] == placement

    assert entry_from_job({"metadata": {"name": "x", "annotations": {}}}, None, None, {}, 1) is None
    broken = {"metadata": {"annotations": {"thinkube.io/request": "{", "thinkube.io/user": "a"}}}
    assert job_record(broken) is None


def test_positions_come_from_kueue_pending_workloads_through_their_owner_jobs():
    summary = {
        "items": [
            {
                "metadata": {"ownerReferences": [{"kind": "Job", "name": "thinkube-j-b"}]},
                "positionInLocalQueue": 0,
            },
            {"metadata": {"ownerReferences": [{"kind": "Job", "name": "other"}]}},
            {
                "metadata": {"ownerReferences": [{"kind": "Job", "name": "thinkube-j-a"}]},
                "positionInLocalQueue": 2,
            },
        ]
    }
    names = {"thinkube-j-a": "j-a", "thinkube-j-b": "j-b"}
    assert pending_positions(summary, names) == {"j-b": 1, "j-a": 3}
    assert pending_positions({}, names) == {}


def test_the_kept_tail_counts_the_lines_it_dropped():
    tail = OutputTail(max_bytes=12)
    for line in ["one", "two", "three", "four"]:
        tail.add(line)
    record = tail.record()
    assert record == {"text": "three\nfour", "truncated": True, "skipped_lines": 2}
    assert _stored_lines(record) == [(3, "three"), (4, "four")]
    whole = OutputTail(100)
    whole.add("x")
    assert whole.record() == {"text": "x", "truncated": False, "skipped_lines": 0}


def test_an_older_database_gets_the_output_column(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'old.sqlite'}")
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE thinkube_queue (id VARCHAR(32) PRIMARY KEY, kind VARCHAR(16), "
                "user VARCHAR(255), name VARCHAR(63), project VARCHAR(63), status VARCHAR(16), "
                "reason VARCHAR(32), message TEXT, exit_code INTEGER, priority INTEGER, "
                "request JSON, script TEXT, metadata JSON, expected_s FLOAT, "
                "submitted_at FLOAT, started_at FLOAT, finished_at FLOAT, deadline_at FLOAT, "
                "node VARCHAR(253), placement JSON)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO thinkube_queue (id, kind, user, name, project, status, priority, "
                "request, script, metadata, expected_s, submitted_at, placement) VALUES "
                "('j-old', 'job', 'bob', '', '', 'queued', 0, '{}', '', '{}', 5, 1, '{}')"
            )
        )
    store = JobStore(engine)
    assert store.get("j-old")["output"] is None
    store.finish("j-old", "completed", "Completed", 2.0, output={"text": "ok"})
    assert store.get("j-old")["output"] == {"text": "ok"}
    JobStore(engine)  # a second start finds the column there
