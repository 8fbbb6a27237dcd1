"""Moved to :mod:`thinkube_core.accounts` (the service's jobs run as people's accounts too);
kept so that older imports keep working."""

from thinkube_core.accounts import (  # noqa: F401
    ACCOUNT_NAME,
    CUT_AT,
    DEFAULT_PREFIX,
    PREFIX,
    AccountError,
    account_name,
    closed_to_others,
    ensure_account,
    existing_account,
    usable,
    useradd_command,
)
