"""The labels that mark a GPU job's Kubernetes objects (its Job, ConfigMap and pod): read
by the service's inventory (which pods are jobs, to account them) and written by the
queue's Kubernetes backend."""

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "thinkube"
JOB_ID_LABEL = "thinkube.io/job-id"
USER_LABEL = "thinkube.io/user"
PROJECT_LABEL = "thinkube.io/project"
