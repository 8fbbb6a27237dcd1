"""Moved to :mod:`thinkube_core.run_as` (the service's jobs run through it too); kept so
that older imports keep working."""

from thinkube_core.run_as import become, main  # noqa: F401
