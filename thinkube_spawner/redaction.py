"""Secrets out of log lines: a logging filter that blanks the value of every environment
variable whose name says it is a secret (…TOKEN…, …SECRET…, …PASSWORD…, …KEY…), in the forms
a pod manifest is logged in (the Kubernetes client's `to_str()` and JSON)."""

from __future__ import annotations

import logging
import re

SECRET_NAME = r"[A-Za-z0-9_]*(?:TOKEN|SECRET|PASSWORD|PASSWD|KEY)[A-Za-z0-9_]*"
# {'name': 'JUPYTERHUB_API_TOKEN', 'value': '...'} and {"name": "X", "value": "..."},
# whatever whitespace or line breaks pprint put between them
ENV_VALUE = re.compile(
    r"""(?P<head>(?P<q>['"])name(?P=q):\s*(?P=q)""" + SECRET_NAME + r"""(?P=q),\s*"""
    r"""(?P=q)value(?P=q):\s*)(?P<vq>['"])(?P<value>(?:(?!(?P=vq)).)*)(?P=vq)""",
    re.IGNORECASE | re.DOTALL,
)
REDACTED = "[secret]"


def redact(text: str) -> str:
    return ENV_VALUE.sub(lambda m: f"{m['head']}{m['vq']}{REDACTED}{m['vq']}", text)


class SecretRedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


# Loggers that write whole pods, environment included: the Kubernetes client logs every
# response body at DEBUG (the pod kubespawner created, the pods it reads back).
POD_LOGGERS = ("kubernetes_asyncio.client.rest",)


def redact_secrets_in(log: logging.Logger | logging.LoggerAdapter) -> None:
    """Add the filter, once, to this logger (spawners share the hub's) and to the loggers
    that write pods."""
    logger = log.logger if isinstance(log, logging.LoggerAdapter) else log
    for each in (logger, *map(logging.getLogger, POD_LOGGERS)):
        if not any(isinstance(f, SecretRedactingFilter) for f in each.filters):
            each.addFilter(SecretRedactingFilter())
