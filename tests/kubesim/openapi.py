"""The OpenAPI v3 discovery kubectl reads before it writes.

kubectl asks `/openapi/v3` which group-versions have documents, then reads the document of
the object's group-version to see whether its PATCH operation takes `fieldValidation`; if
so it lets the server validate (`?fieldValidation=Strict`), which kubesim's admission
does. The documents list kubesim's paths and operations; object schemas are left out
(kubectl then computes apply patches from its compiled-in types, as it does for built-ins).
"""

from __future__ import annotations

import hashlib
import json

from .resources import ResourceType, served

COMMON_PARAMETERS = [
    {"name": name, "in": "query", "schema": {"type": "string"}}
    for name in ("dryRun", "fieldManager", "fieldValidation", "pretty")
]


def group_version_path(rt: ResourceType) -> str:
    return f"apis/{rt.group}/{rt.version}" if rt.group else f"api/{rt.version}"


def _operations(rt: ResourceType, collection: bool) -> dict:
    gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
    verbs = ("get", "post") if collection else ("get", "put", "patch", "delete")
    return {
        verb: {
            "operationId": f"{verb}{rt.kind}",
            "parameters": COMMON_PARAMETERS,
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": {
                "post": "post",
                "put": "put",
                "patch": "patch",
                "delete": "delete",
            }.get(verb, "list" if collection else "get"),
            "x-kubernetes-group-version-kind": gvk,
        }
        for verb in verbs
    }


def document(group_version: str, addons: frozenset[str] = frozenset()) -> dict | None:
    types = [rt for rt in served(addons) if group_version_path(rt) == group_version]
    if not types:
        return None
    paths = {}
    for rt in types:
        base = (
            f"/{group_version}/" + ("namespaces/{namespace}/" if rt.namespaced else "") + rt.plural
        )
        paths[base] = _operations(rt, collection=True)
        paths[base + "/{name}"] = _operations(rt, collection=False)
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }


def root(addons: frozenset[str] = frozenset()) -> dict:
    paths = {}
    for group_version in sorted({group_version_path(rt) for rt in served(addons)}):
        digest = (
            hashlib.sha512(json.dumps(document(group_version, addons), sort_keys=True).encode())
            .hexdigest()[:32]
            .upper()
        )
        paths[group_version] = {"serverRelativeURL": f"/openapi/v3/{group_version}?hash={digest}"}
    return {"paths": paths}
