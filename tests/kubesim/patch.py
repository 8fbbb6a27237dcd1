"""The three PATCH flavours of the Kubernetes API server, on plain JSON values.

* ``json_merge_patch``: RFC 7386 (``application/merge-patch+json``).
* ``strategic_merge_patch``: ``application/strategic-merge-patch+json`` as
  k8s.io/apimachinery/pkg/util/strategicpatch applies it. Which lists merge, and by which key,
  comes from the x-kubernetes-patch-strategy / -merge-key extensions of the official schemas
  (so ``containers`` merge by name, ``ports`` by containerPort, ``tolerations`` replace), and
  the resulting order follows the library's rules: patch order first, server-only items
  interleaved by their old positions, ``$setElementOrder`` when given.
* ``json_patch``: RFC 6902 (``application/json-patch+json``), with the error texts of
  evanphx/json-patch that the apiserver passes on.

None of them mutates its inputs. Errors are ``PatchError``; ``UnsupportedPatchError`` is the
415 the apiserver gives for a strategic merge patch on a kind it has no Go type for.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from typing import Any

from .admission import object_schema, property_schema

__all__ = [
    "PatchError",
    "UnsupportedPatchError",
    "json_merge_patch",
    "json_patch",
    "strategic_merge_patch",
]


class PatchError(ValueError):
    """A patch that cannot be applied; the apiserver answers 422 (400 for a malformed one)."""


class UnsupportedPatchError(PatchError):
    """A strategic merge patch for a kind without a Go type (custom resources): HTTP 415."""

    status = 415


# -- RFC 7386 ---------------------------------------------------------------------------------


def json_merge_patch(target: Any, patch: Any) -> Any:
    """Objects merge key by key, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = copy.deepcopy(dict(target)) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


# -- strategic merge patch --------------------------------------------------------------------

_DIRECTIVE = "$patch"
_RETAIN_KEYS = "$retainKeys"
_SET_ORDER = "$setElementOrder/"
_DELETE_FROM_LIST = "$deleteFromPrimitiveList/"
_UNSUPPORTED_MEDIA = (
    "the body of the request was in an unknown format - accepted media types include: "
    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
)


def strategic_merge_patch(target: Mapping, patch: Mapping, kind: str) -> dict:
    """Apply a strategic merge patch to an object of ``kind`` (its apiVersion picks the schema)."""
    if not isinstance(patch, Mapping):
        raise PatchError("invalid JSON document")  # mergepatch.ErrBadJSONDoc
    schema = object_schema(kind, target.get("apiVersion") or None)
    if schema is None:
        raise UnsupportedPatchError(_UNSUPPORTED_MEDIA)
    return _merge_map(copy.deepcopy(dict(target)), copy.deepcopy(dict(patch)), schema)


def _json_kind(value: Any) -> str:
    """Go's reflect kind of a decoded JSON value: numbers are all float64."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _clean(value: Any) -> Any:
    """A patch value entering the object fresh: directives and nulls do not survive decoding."""
    if isinstance(value, Mapping):
        return {
            key: _clean(item)
            for key, item in value.items()
            if item is not None and not key.startswith("$")
        }
    if isinstance(value, list):
        return [
            _clean(item) for item in value if not (isinstance(item, Mapping) and _DIRECTIVE in item)
        ]
    return value


def _strategies(declaration: Mapping | None) -> list[str]:
    return (declaration or {}).get("x-kubernetes-patch-strategy", "").split(",")


def _merge_map(original: dict, patch: dict, schema: Mapping | None) -> dict:
    directive = patch.pop(_DIRECTIVE, None)
    if directive == "replace":
        return _clean(patch)
    if directive == "delete":
        return {}  # the whole map goes; the library leaves an empty one
    if directive is not None:
        raise PatchError(f"unknown patch type: {directive} in map: {json.dumps(patch)}")

    retain = patch.pop(_RETAIN_KEYS, None)
    if retain is not None:
        # Keep only the listed fields of the original; the patch may not set others.
        if not isinstance(retain, list) or any(
            value is not None and not key.startswith("$") and key not in retain
            for key, value in patch.items()
        ):
            raise PatchError("invalid patch format of retainKeys")
        for key in [key for key in original if key not in retain]:
            del original[key]

    orders = {
        key[len(_SET_ORDER) :]: patch.pop(key) for key in list(patch) if key.startswith(_SET_ORDER)
    }
    deletions = {
        key[len(_DELETE_FROM_LIST) :]: patch.pop(key)
        for key in list(patch)
        if key.startswith(_DELETE_FROM_LIST)
    }

    for key, value in patch.items():
        if value is None:
            original.pop(key, None)
            continue
        declaration, child = property_schema(schema, key)
        strategies = _strategies(declaration)
        current = original.get(key)
        if current is None:  # merge into nothing, so that directives still apply
            current = {} if isinstance(value, Mapping) else [] if isinstance(value, list) else None
        if _json_kind(current) != _json_kind(value):
            original[key] = _clean(value)
        elif isinstance(value, Mapping):
            original[key] = (
                _clean(value) if "replace" in strategies else _merge_map(current, value, child)
            )
        elif isinstance(value, list) and "merge" in strategies:
            merge_key = declaration.get("x-kubernetes-patch-merge-key") if declaration else None
            item_schema = property_schema(child, 0)[0]
            original[key] = _merge_list(
                current, value, merge_key, item_schema, orders.pop(key, None)
            )
        else:
            original[key] = _clean(value)

    for key, values in deletions.items():
        if not isinstance(values, list):
            raise PatchError("invalid patch format of primitive list")
        if isinstance(original.get(key), list):
            original[key] = [item for item in original[key] if item not in values]
            if not original[key]:
                del original[key]  # omitempty: the stored object has no empty list

    for key, order in orders.items():  # an order for a list the patch leaves alone
        if not isinstance(order, list):
            raise PatchError("invalid patch format of setElementOrder list")
        if isinstance(original.get(key), list):
            merge_key = (property_schema(schema, key)[0] or {}).get("x-kubernetes-patch-merge-key")
            original[key] = _ordered(original[key], order, original[key], merge_key)
    return original


def _identity(item: Any, merge_key: str | None) -> str | None:
    """What makes two list items the same item: the merge key's value, or the scalar itself."""
    if merge_key is not None:
        if not isinstance(item, Mapping):
            return None
        item = item.get(merge_key)
    if isinstance(item, float) and item.is_integer():
        item = int(item)  # JSON has one number type
    return json.dumps(item, sort_keys=True)


def _merge_list(
    original: list,
    patch: list,
    merge_key: str | None,
    item_schema: Mapping | None,
    order: list | None,
) -> list:
    if not original and not patch:
        return original
    if any(isinstance(item, list) for item in [*original, *patch]):
        raise PatchError("lists of lists are not supported")
    if not any(isinstance(item, Mapping) for item in [*original, *patch]):
        merge_key = None  # a set of scalars (finalizers): union, deduplicated
        merged = list(dict.fromkeys(json.dumps(item) for item in [*original, *patch]))
        merged_items = [json.loads(item) for item in merged]
        return _ordered(merged_items, order if order is not None else patch, original, None)
    if merge_key is None:
        raise PatchError("cannot merge lists without merge key")

    kept, replace = [], False
    for item in patch:
        directive = item.get(_DIRECTIVE) if isinstance(item, Mapping) else None
        if directive is None:
            kept.append(item)
        elif directive == "delete":
            if merge_key not in item:
                raise PatchError(
                    f"map: {json.dumps(item)} does not contain declared merge key: {merge_key}"
                )
            target = _identity(item, merge_key)
            original = [entry for entry in original if _identity(entry, merge_key) != target]
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise PatchError("merging lists cannot yet be specified in the patch")
        else:
            raise PatchError(f"unknown patch type: {directive} in map: {json.dumps(item)}")
    if replace:
        return [_clean(item) for item in kept]

    merged = list(original)
    for item in kept:
        if not isinstance(item, Mapping) or merge_key not in item:
            raise PatchError(
                f"map: {json.dumps(item)} does not contain declared merge key: {merge_key}"
            )
        identity = _identity(item, merge_key)
        position = next(
            (i for i, entry in enumerate(merged) if _identity(entry, merge_key) == identity), None
        )
        if position is None:
            merged.append(_merge_map({}, dict(item), item_schema))
        else:
            merged[position] = _merge_map(merged[position], dict(item), item_schema)
    return _ordered(merged, order if order is not None else kept, original, merge_key)


def _ordered(merged: list, patch_order: list, server_order: list, merge_key: str | None) -> list:
    """normalizeElementOrder: patch items in patch order, server-only items in their old order,
    the two interleaved by old position (an item new to the list goes before server items)."""

    def index(items: list, item: Any) -> int:
        identity = _identity(item, merge_key)
        return next(
            (i for i, entry in enumerate(items) if _identity(entry, merge_key) == identity), -1
        )

    in_patch = [item for item in merged if index(patch_order, item) >= 0]
    server_only = [item for item in merged if index(patch_order, item) < 0]
    in_patch.sort(key=lambda item: index(patch_order, item))
    server_only.sort(key=lambda item: index(server_order, item))
    result: list = []
    while in_patch or server_only:
        if not in_patch:
            result.append(server_only.pop(0))
        elif not server_only:
            result.append(in_patch.pop(0))
        else:
            left, right = index(server_order, server_only[0]), index(server_order, in_patch[0])
            result.append(server_only.pop(0) if 0 <= left < right else in_patch.pop(0))
    return result


# -- RFC 6902 ---------------------------------------------------------------------------------


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise PatchError("path is not a string")
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f'JSON pointer must be empty or start with a "/": {path}')
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _list_index(container: list, token: str, path: str, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not re.fullmatch("0|[1-9][0-9]*", token):
        raise PatchError(f"Unable to access invalid index: {token}: invalid index referenced")
    index = int(token)
    if index > len(container) - (0 if allow_end else 1):
        raise PatchError(f"Unable to access invalid index: {index}: invalid index referenced")
    return index


def _parent(doc: Any, tokens: list[str], path: str, operation: str) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif (
            isinstance(node, list)
            and re.fullmatch("0|[1-9][0-9]*", token)
            and int(token) < len(node)
        ):
            node = node[int(token)]
        else:
            raise PatchError(
                f'{operation} operation does not apply: doc is missing path: "{path}": missing value'
            )
    if not isinstance(node, dict | list):
        raise PatchError(
            f'{operation} operation does not apply: doc is missing path: "{path}": missing value'
        )
    return node


def _get(doc: Any, path: str, operation: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return doc
    parent, last = _parent(doc, tokens, path, operation), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(
                f"{operation} operation does not apply: doc is missing key: {path}: missing value"
            )
        return parent[last]
    return parent[_list_index(parent, last, path, allow_end=False)]


def _add(doc: Any, path: str, value: Any, operation: str = "add") -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent, last = _parent(doc, tokens, path, operation), tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    else:
        parent.insert(_list_index(parent, last, path, allow_end=True), value)
    return doc


def _remove(doc: Any, path: str, operation: str = "remove") -> tuple[Any, Any]:
    tokens = _pointer(path)
    if not tokens:
        raise PatchError(
            f'{operation} operation does not apply: doc is missing path: "{path}": missing value'
        )
    parent, last = _parent(doc, tokens, path, operation), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(
                f'error in remove for path: "{path}": Unable to remove nonexistent key: {last}: missing value'
            )
        return doc, parent.pop(last)
    return doc, parent.pop(_list_index(parent, last, path, allow_end=False))


def _replace(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    _get(doc, path, "replace")  # the target must exist
    parent, last = _parent(doc, tokens, path, "replace"), tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    else:
        parent[_list_index(parent, last, path, allow_end=False)] = value
    return doc


def _json_equal(left: Any, right: Any) -> bool:
    """JSON equality: 1 == 1.0, but true != 1 and key order does not matter."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(_json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_json_equal, left, right))
    return type(left) is type(right) and left == right


def json_patch(target: Any, operations: Any) -> Any:
    """Apply RFC 6902 operations in order; any failure leaves nothing applied."""
    if not isinstance(operations, list):
        raise PatchError("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, Mapping):
            raise PatchError("json: cannot unmarshal into Go value of type jsonpatch.Operation")
        op, path = operation.get("op"), operation.get("path")
        if op in ("add", "replace", "test") and "value" not in operation:
            raise PatchError(
                f"{op} operation does not apply: missing value"
            )  # jsonpatch.ErrMissing
        if op == "add":
            doc = _add(doc, path, copy.deepcopy(operation["value"]))
        elif op == "remove":
            doc, _ = _remove(doc, path)
        elif op == "replace":
            doc = _replace(doc, path, copy.deepcopy(operation["value"]))
        elif op in ("move", "copy"):
            source = operation.get("from")
            try:
                value = _get(doc, source, op)
            except PatchError:
                raise PatchError(
                    f"{op} operation does not apply: doc is missing from path: {source}: missing value"
                ) from None
            if op == "move":
                if (
                    isinstance(path, str)
                    and isinstance(source, str)
                    and path.startswith(source + "/")
                ):
                    raise PatchError(
                        f"move operation does not apply: cannot move {source} into its child {path}"
                    )
                doc, value = _remove(doc, source, "move")
            doc = _add(doc, path, copy.deepcopy(value), op)
        elif op == "test":
            try:
                actual = _get(doc, path, "test")
            except PatchError:
                actual = _MISSING
            if actual is _MISSING or not _json_equal(actual, operation["value"]):
                raise PatchError(f"testing value {path} failed: test failed")
        else:
            raise PatchError(f"Unexpected kind: {op}")
    return doc


_MISSING = object()
