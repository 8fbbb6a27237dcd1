"""The jupyterhub-idle-culler hook's reading of a server model (the culler's models carry no
user name). Its decisions against a live service: tests/e2e/test_gpu_idle_kubesim.py."""

from __future__ import annotations

import inspect

import pytest

from thinkube_core.idle_culler_hook import make_gpu_cull_arbiter, server_owner


@pytest.mark.parametrize(
    "server, owner",
    [
        ({"name": "", "url": "/user/alice/"}, "alice"),
        ({"name": "gpu", "url": "/user/alice/gpu/"}, "alice"),
        ({"name": "", "url": "/hub-base/user/bob%40lab.org/"}, "bob@lab.org"),
        ({"name": "a b", "url": "/user/carol/a%20b/"}, "carol"),
        # a user named "user" with a named server "x"
        ({"name": "x", "url": "/user/user/x/"}, "user"),
        ({"name": "gpu", "url": "/user/alice/"}, None),  # the name is not in the URL
        ({"name": "", "url": "/users/alice/"}, None),
        ({"name": "", "url": ""}, None),
        ({"name": "", "url": None}, None),
        ({}, None),
    ],
)
def test_the_owner_is_read_from_the_servers_url(server, owner):
    assert server_owner(server) == owner


def test_the_hook_has_the_signature_the_culler_calls():
    """jupyterhub-idle-culler 2.0 calls it with keywords and awaits what it returns."""
    from jupyterhub_idle_culler import default_cull_arbiter

    hook = make_gpu_cull_arbiter("http://127.0.0.1:9/services/thinkube-resources/")
    assert inspect.iscoroutinefunction(hook)
    wanted = set(inspect.signature(default_cull_arbiter).parameters) - {"kwargs"}
    assert wanted <= set(inspect.signature(hook).parameters)


async def test_a_service_that_cannot_be_asked_culls_nothing():
    from datetime import timedelta

    hook = make_gpu_cull_arbiter("http://127.0.0.1:9/services/thinkube-resources/", token="t")
    server = {"name": "", "url": "/user/alice/"}
    assert await hook(inactive=timedelta(days=3), inactive_limit=60, server=server) is False
