"""What the service's own HTML pages share (the page for people, the waiting page): their
templates, and the Content-Security-Policy that lets only a page's own inline style and
script run and talk to its own origin."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import jinja2

__all__ = ["TEMPLATES", "content_security_policy", "read_template", "template_environment"]

TEMPLATES = Path(__file__).resolve().parent / "templates"


def read_template(name: str) -> str:
    return (TEMPLATES / name).read_text()


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


def content_security_policy(css: str, js: str) -> str:
    """Only this inline style and script run; the page talks to its own origin only."""
    return (
        "default-src 'none'; "
        f"style-src {_csp_hash(css)}; "
        f"script-src {_csp_hash(js)}; "
        "connect-src 'self'; img-src 'self' data:; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'self'"
    )


def template_environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
