"""The labels that mark a GPU job's Kubernetes objects (its Job, ConfigMap and pod): read
by the service's inventory (which pods are jobs, to account them) and written by the
queue's Kubernetes backend."""

import hashlib
import re

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "thinkube"
JOB_ID_LABEL = "thinkube.io/job-id"
USER_LABEL = "thinkube.io/user"
PROJECT_LABEL = "thinkube.io/project"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

_LABEL_VALUE_RE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?", re.ASCII)
_NOT_LABEL_RE = re.compile(r"[^-A-Za-z0-9_.]+", re.ASCII)
_MAX_LABEL_VALUE = 63


def label_value(name: str) -> str:
    """`name` as a Kubernetes label value: itself when it is one (at most 63 letters,
    digits, '-', '_', '.', starting and ending with a letter or digit); otherwise a readable
    slug of it, '---' and 8 hex digits of its SHA-256, so that two names never share one."""
    if _LABEL_VALUE_RE.fullmatch(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    slug = _NOT_LABEL_RE.sub("-", name)[: _MAX_LABEL_VALUE - len(digest) - 3]
    slug = slug.strip("-_.")
    return f"{slug}---{digest}" if slug else digest
