"""Admission as a real API server does it: decoding checks, defaulting and validation.

Three layers, in the apiserver's order:

1. Decoding. The object is checked against the official Kubernetes 1.32 OpenAPI schemas that
   ``kubernetes_validate`` ships (strict flavour: unknown fields are errors). Wrong JSON types
   and unparseable quantities fail here; the apiserver answers those with 400 BadRequest.
   Unknown fields fail here too, as under ``fieldValidation=Strict``.
2. Defaulting (``default_object``, ``default_pod``): what the v1 defaulters and the default
   admission plugins write into a new Pod, and the storage kinds' defaults. (Admission that
   reads the cluster, such as DefaultStorageClass, is in volumes.py.)
3. Validation: the rules of k8s.io/kubernetes pkg/apis/core/validation that the schema cannot
   express (names, labels, containers, resource requests and limits, claims' access modes and
   storage request), answered with 422 Invalid. Messages are the apiserver's, so a test can compare them with a real cluster.

The schema helpers (``object_schema``, ``property_schema``) are shared with ``patch``, whose
strategic merge patch reads the patch strategies from the same schemas.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal

import jsonschema
from kubernetes_validate.utils import all_versions, major_minor, schema_contents
from referencing import Registry, Resource

from .noderesources import is_extended_resource, is_hugepages, is_native
from .quantity import (
    BINARY_SI,
    QUANTITY_FORMAT_ERROR,
    QuantityError,
    canonical,
    decode_quantity,
    quantity_parts,
    quantity_text,
)
from .selectors import dns_subdomain_errors, regex_error, validate_label_key, validate_label_value

__all__ = [
    "KUBERNETES_VERSION",
    "Cause",
    "bad_request_message",
    "default_job",
    "default_object",
    "default_pod",
    "invalid_message",
    "object_schema",
    "pod_qos_class",
    "property_schema",
    "request_error",
    "validate",
]

KUBERNETES_VERSION = "1.32"

# Cause.origin values: which stage of the apiserver rejects the object.
DECODE = "decode"  # wrong JSON type, bad quantity: 400 BadRequest
UNKNOWN_FIELD = "unknown-field"  # 400 under fieldValidation=Strict, a warning under Warn
VALIDATION = "validation"  # 422 Invalid


@dataclass(frozen=True)
class Cause:
    """A ``metav1.StatusCause``: ``message`` is the error body, ``field`` the Go field path."""

    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueNotSupported, ...
    message: str  # e.g. 'Invalid value: "1": must be equal to nvidia.com/gpu limit of 0'
    field: str  # e.g. "spec.containers[0].resources.requests"
    origin: str = dataclasses.field(default=VALIDATION, compare=False)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


# -- schemas ----------------------------------------------------------------------------------

_DEFINITIONS_FILE = "_definitions.json"
_QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"


@functools.cache
def _schema_dir() -> str:
    # kubernetes_validate's rule: the newest schema set not newer than the wanted version.
    wanted = major_minor(KUBERNETES_VERSION)
    version = [v for v in all_versions() if major_minor(v) <= wanted][-1]
    return f"kubernetes-json-schema/v{version}-local-strict"


@functools.cache
def _definitions() -> dict:
    return schema_contents(f"{_schema_dir()}/{_DEFINITIONS_FILE}", KUBERNETES_VERSION)


@functools.cache
def _registry() -> Registry:
    return Resource.from_contents(_definitions()) @ Registry()


@functools.cache
def _definition_names() -> dict[tuple[str, str, str], str]:
    """(group, version, kind) -> definition name, from x-kubernetes-group-version-kind."""
    names = {}
    for name, definition in _definitions()["$defs"].items():
        for gvk in definition.get("x-kubernetes-group-version-kind", ()):
            names[(gvk["group"], gvk["version"], gvk["kind"])] = name
    return names


def _definition_name(kind: str, api_version: str) -> str | None:
    group, _, version = api_version.rpartition("/")
    return _definition_names().get((group, version, kind))


_STABILITY = {"": 0, "v1": 1, "v2": 2}  # lower sorts first: core group, then GA versions


@functools.cache
def object_schema(kind: str, api_version: str | None = None) -> dict | None:
    """The schema of a top-level kind (``"Pod"``, ``"v1"``), or None for an unknown kind.

    Without a (known) apiVersion, the core group's or else the most stable version's.
    """
    name = _definition_name(kind, api_version) if api_version else None
    if name is None:
        candidates = [(g, v, n) for (g, v, k), n in _definition_names().items() if k == kind]
        candidates.sort(key=lambda c: (_STABILITY.get(c[0], 9), _STABILITY.get(c[1], 9), c[1]))
        name = candidates[0][2] if candidates else None
    return _definitions()["$defs"][name] if name else None


def _ref_name(node: Mapping) -> str | None:
    ref = node.get("$ref")  # JSONSchemaProps has a *property* named "$ref", hence the check
    return ref.rpartition("/$defs/")[2] if isinstance(ref, str) else None


def _resolve(node: Mapping | None) -> Mapping | None:
    """Follow a ``$ref`` into the definitions."""
    if node is None:
        return None
    name = _ref_name(node)
    return _definitions()["$defs"][name] if name else node


def property_schema(node: Mapping | None, key: str | int) -> tuple[Mapping | None, Mapping | None]:
    """The schema one step down from ``node``: ``(declaration, resolved)``.

    ``declaration`` carries the x-kubernetes-patch-* extensions of a struct field; for list
    items and map values it is the item schema. ``resolved`` has the ``$ref`` followed.
    """
    node = _resolve(node)
    if node is None:
        return None, None
    if isinstance(key, int):
        declaration = node.get("items")
    elif "properties" in node:
        declaration = node["properties"].get(key)
    else:
        extra = node.get("additionalProperties")
        declaration = extra if isinstance(extra, Mapping) else None
    return declaration, _resolve(declaration)


@functools.cache
def _validator(kind: str, api_version: str) -> jsonschema.Draft202012Validator | None:
    name = _definition_name(kind, api_version)
    if name is None:
        return None
    root = {"$ref": f"{_definitions()['$id']}#/$defs/{name}"}
    return jsonschema.Draft202012Validator(root, registry=_registry())


# -- error texts (k8s.io/apimachinery/pkg/util/validation/field) -------------------------------

REQUIRED, INVALID, NOT_SUPPORTED = (
    "FieldValueRequired",
    "FieldValueInvalid",
    "FieldValueNotSupported",
)
FORBIDDEN, DUPLICATE, NOT_FOUND = "FieldValueForbidden", "FieldValueDuplicate", "FieldValueNotFound"
TOO_LONG, TYPE_INVALID = "FieldValueTooLong", "FieldValueTypeInvalid"
_TYPE_TEXT = {
    REQUIRED: "Required value",
    INVALID: "Invalid value",
    NOT_SUPPORTED: "Unsupported value",
    FORBIDDEN: "Forbidden",
    DUPLICATE: "Duplicate value",
    NOT_FOUND: "Not found",
    TOO_LONG: "Too long",
    TYPE_INVALID: "Invalid value",
}
_NO_VALUE_SHOWN = {REQUIRED, FORBIDDEN, TOO_LONG}


class _GoText(str):
    """A value already rendered the way Go's %#v would print it."""


def _go_value(value: object) -> str:
    """Render a bad value as ``field.Error.ErrorBody`` does (%q for strings, %v for scalars)."""
    if isinstance(value, _GoText):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _cause(
    reason: str, path: str, value: object = None, detail: str = "", origin: str = VALIDATION
) -> Cause:
    body = _TYPE_TEXT[reason]
    if reason not in _NO_VALUE_SHOWN:
        body += f": {_go_value(value)}"
    if detail:
        body += f": {detail}"
    return Cause(reason, body, path, origin)


def _not_supported(path: str, value: object, valid: list[str]) -> Cause:
    detail = "supported values: " + ", ".join(json.dumps(v) for v in valid)
    return _cause(NOT_SUPPORTED, path, value, detail)


def invalid_message(kind: str, name: str, causes: list[Cause], group: str = "") -> str:
    """The 422 message: ``Pod "foo" is invalid: <field>: <message>`` (``[a, b]`` for several).

    ``group`` qualifies the kind as the apiserver does (``Job.batch``); core kinds have none.
    """
    qualified = f"{kind}.{group}" if group else kind
    unique = list(dict.fromkeys(str(cause) for cause in causes))  # Go's aggregate dedups
    if not unique:
        return f"{qualified} {json.dumps(name)} is invalid"
    detail = unique[0] if len(unique) == 1 else f"[{', '.join(unique)}]"
    return f"{qualified} {json.dumps(name)} is invalid: {detail}"


def bad_request_message(kind: str, api_version: str, causes: list[Cause]) -> str:
    """The 400 message for causes that fail decoding (``origin`` decode or unknown-field)."""
    version = api_version.rpartition("/")[2]
    prefix = f"{kind} in version {json.dumps(version)} cannot be handled as a {kind}: "
    decode = [cause for cause in causes if cause.origin == DECODE]
    if decode:  # the JSON decoder stops at its first error
        return prefix + decode[0].message
    unknown = ", ".join(cause.message for cause in causes if cause.origin == UNKNOWN_FIELD)
    return prefix + f"strict decoding error: {unknown}"


def request_error(
    kind: str, api_version: str, name: str, causes: list[Cause], group: str = ""
) -> tuple[int, str, str]:
    """(HTTP code, Status reason, message) for the causes ``validate`` returned."""
    if any(cause.origin != VALIDATION for cause in causes):
        return 400, "BadRequest", bad_request_message(kind, api_version, causes)
    return 422, "Invalid", invalid_message(kind, name, causes, group)


# -- quantities -------------------------------------------------------------------------------


def _quantity(raw: object) -> Decimal | None:
    try:
        return decode_quantity(raw)
    except QuantityError:
        return None


def _quantity_error(raw: object) -> str | None:
    """The apiserver's decoding error for a value that is not a quantity, else None."""
    try:
        decode_quantity(raw)
    except QuantityError as error:
        return error.go_error
    return None


def quantity_string(raw: object) -> str:
    """``Quantity.String()``: the canonical form the apiserver prints (``"2000m"`` -> ``"2"``)."""
    return canonical(raw)


def _quantity_struct(raw: object) -> _GoText:
    """A v1.32 ``resource.Quantity`` as %#v prints it, which ``must be an integer`` shows.

    Mirrors the int64 fast path of ``ParseQuantity``; values it cannot hold fall back to the
    quoted canonical string (the real dump would show a pointer address there).
    """
    parts = quantity_parts(raw)
    sign, numerator, denominator, fmt = parts.sign, parts.numerator, parts.denominator, parts.format
    text = quantity_text(raw)
    if fmt == BINARY_SI:
        power = parts.exponent
        precision = 15 - len(numerator) - int(power * 3 / 10) - 1 if not denominator else -1
        multiplier, scale = 1 << power, 0
    else:
        scale = parts.exponent
        precision = 18 - len(numerator) - len(denominator)
        multiplier = 1
    scale -= len(denominator)
    shifted = numerator + denominator
    amount = int(shifted) * multiplier
    if precision < 0 or scale < -9 or amount >= 2**63:
        return _GoText(json.dumps(quantity_string(raw)))
    is_canonical = (
        power % 10 == 0 and int(shifted) & 7 != 0
        if fmt == BINARY_SI
        else scale % 3 == 0 and not shifted.endswith("000") and shifted[0] != "0"
    )
    cached = text if is_canonical else ""
    return _GoText(
        f"resource.Quantity{{i:resource.int64Amount{{value:{-amount if sign == '-' else amount}, "
        f"scale:{scale}}}, d:resource.infDecAmount{{Dec:(*inf.Dec)(nil)}}, "
        f"s:{json.dumps(cached)}, Format:{json.dumps(fmt)}}}"
    )


# -- decoding: schema validation -------------------------------------------------------------

_GO_PACKAGES = (
    ("io.k8s.apimachinery.pkg.api.resource.", "resource."),
    ("io.k8s.apimachinery.pkg.util.intstr.", "intstr."),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.", "v1."),
    ("io.k8s.apimachinery.pkg.runtime.", "runtime."),
)


def _go_type_name(definition: str) -> str:
    for prefix, package in _GO_PACKAGES:
        if definition.startswith(prefix):
            return package + definition[len(prefix) :]
    parts = definition.split(".")
    return f"{parts[-2]}.{parts[-1]}"


def _go_type(declaration: Mapping | None) -> str:
    """The Go type of a schema node, for ``cannot unmarshal ... of type <T>``."""
    if not declaration:
        return "interface {}"
    if name := _ref_name(declaration):
        return _go_type_name(name)
    types = declaration.get("type") or []
    types = [types] if isinstance(types, str) else types
    if "array" in types:
        return "[]" + _go_type(declaration.get("items"))
    if "object" in types:
        extra = declaration.get("additionalProperties")
        return f"map[string]{_go_type(extra if isinstance(extra, Mapping) else None)}"
    if "integer" in types:
        return declaration.get("format", "int64")
    if "number" in types:
        return "float64"
    if "boolean" in types:
        return "bool"
    return "string"


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {json.dumps(value)}"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "null")


@dataclass
class _Located:
    field: str  # Go field path: spec.containers[0].resources.limits[cpu]
    struct: str  # Go struct holding the last field, for decoder messages
    json_path: str  # dotted JSON names without indices: spec.containers.resources.limits
    declaration: Mapping | None


def _locate(root_name: str, path: list[str | int]) -> _Located:
    """Walk the schema along an instance path, naming it the way Go error messages do."""
    field_path, json_names = "", []
    struct = root_name.rpartition(".")[2]
    node: Mapping | None = _definitions()["$defs"][root_name]
    declaration: Mapping | None = None
    for key in path:
        resolved = _resolve(node)
        is_struct_field = isinstance(key, str) and resolved is not None and "properties" in resolved
        if is_struct_field:
            if _ref_name(node or {}):
                struct = _ref_name(node).rpartition(".")[2]  # type: ignore[union-attr]
            field_path += f".{key}" if field_path else str(key)
            json_names.append(str(key))
        else:
            field_path += f"[{key}]"
        declaration = node = property_schema(node, key)[0]
    return _Located(field_path, struct, ".".join(json_names), declaration)


def _schema_causes(obj: Mapping, kind: str, api_version: str) -> list[Cause]:
    validator = _validator(kind, api_version)
    if validator is None:
        return []
    root_name = _definition_name(kind, api_version)
    assert root_name is not None
    causes = []
    for error in validator.iter_errors(obj):
        path = list(error.absolute_path)
        where = _locate(root_name, path)
        if error.validator == "additionalProperties":
            known = error.schema.get("properties", {})
            for key in error.instance:
                if key not in known:
                    unknown = f"{where.field}.{key}" if where.field else key
                    message = f"unknown field {json.dumps(unknown)}"
                    causes.append(Cause(INVALID, message, unknown, UNKNOWN_FIELD))
        elif error.validator == "required":
            for key in error.validator_value:
                if key not in error.instance:
                    missing = f"{where.field}.{key}" if where.field else key
                    causes.append(_cause(REQUIRED, missing))
        elif error.validator == "enum":
            causes.append(_not_supported(where.field, error.instance, list(error.validator_value)))
        elif error.validator in ("type", "oneOf"):
            if _ref_name(where.declaration or {}) == _QUANTITY:
                message = QUANTITY_FORMAT_ERROR
            else:
                message = (
                    f"json: cannot unmarshal {_json_type(error.instance)} into Go struct field "
                    f"{where.struct}.{where.json_path} of type {_go_type(where.declaration)}"
                )
            causes.append(Cause(TYPE_INVALID, message, where.field, DECODE))
        else:
            causes.append(_cause(INVALID, where.field, error.instance, error.message))
    return causes


@functools.cache
def _quantity_holders() -> frozenset[str]:
    """Definitions with a Quantity somewhere below them, which prunes the quantity walk."""
    refs = {name: set(_refs_below(schema)) for name, schema in _definitions()["$defs"].items()}
    holders = {_QUANTITY}
    while more := {name for name, below in refs.items() if below & holders} - holders:
        holders |= more  # grow to a fixpoint; schemas may be recursive
    return frozenset(holders)


def _refs_below(node: object) -> Iterator[str]:
    if isinstance(node, Mapping):
        if name := _ref_name(node):
            yield name
            return
        for key, value in node.items():
            if key not in ("description", "enum"):
                yield from _refs_below(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs_below(item)


def _quantity_slots(
    parent: object, key: object, node: Mapping | None, path: str
) -> Iterator[tuple[object, object, str]]:
    """(container, key, field path) of every Quantity inside ``parent[key]``, wherever the
    schema puts one."""
    value = parent[key]  # type: ignore[index]
    name = _ref_name(node or {})
    if name == _QUANTITY:
        if value is not None:
            yield parent, key, path
        return
    if name and name not in _quantity_holders():
        return
    if isinstance(value, Mapping):
        resolved = _resolve(node) or {}
        is_struct = "properties" in resolved
        for child_key in value:
            declaration = property_schema(resolved, child_key)[0]
            if declaration is not None:
                child = (
                    (f"{path}.{child_key}" if path else child_key)
                    if is_struct
                    else f"{path}[{child_key}]"
                )
                yield from _quantity_slots(value, child_key, declaration, child)
    elif isinstance(value, list):
        declaration = property_schema(node, 0)[0]
        for index in range(len(value)):
            yield from _quantity_slots(value, index, declaration, f"{path}[{index}]")


def _top_level_quantity_slots(
    obj: Mapping, kind: str, api_version: str
) -> Iterator[tuple[object, object, str]]:
    schema = object_schema(kind, api_version) if _definition_name(kind, api_version) else None
    if schema is None:
        return
    for key in obj:
        declaration = property_schema(schema, key)[0]
        if declaration is not None:
            yield from _quantity_slots(obj, key, declaration, key)


def canonicalize_quantities(obj: dict, kind: str, api_version: str) -> dict:
    """The apiserver stores quantities in canonical form ("0.5" -> "500m",
    "1024Mi" -> "1Gi"); a new object, changed the same way. Call after validation."""
    obj = copy.deepcopy(obj)
    for parent, key, _ in list(_top_level_quantity_slots(obj, kind, api_version)):
        parent[key] = quantity_string(parent[key])  # type: ignore[index]
    return obj


# -- validation: metadata -------------------------------------------------------------------

_DNS_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_1035 = "[a-z]([-a-z0-9]*[a-z0-9])?"


def _dns_label_errors(value: str) -> list[str]:
    errors = ["must be no more than 63 characters"] if len(value) > 63 else []
    if not re.fullmatch(_DNS_LABEL, value):
        if not dns_subdomain_errors(value):
            errors.append("must not contain dots")  # a valid subdomain: only the dots are wrong
        else:
            errors.append(
                regex_error(
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric "
                    "characters or '-', and must start and end with an alphanumeric character",
                    _DNS_LABEL,
                    "my-name",
                    "123-abc",
                )
            )
    return errors


def _dns_1035_errors(value: str) -> list[str]:
    errors = ["must be no more than 63 characters"] if len(value) > 63 else []
    if not re.fullmatch(_DNS_1035, value):
        errors.append(
            regex_error(
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                "start with an alphabetic character, and end with an alphanumeric character",
                _DNS_1035,
                "my-name",
                "abc-123",
            )
        )
    return errors


def _path_segment_errors(value: str) -> list[str]:
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    return [f"may not contain '{char}'" for char in "/%" if char in value]


_NAME_RULES = {
    "Namespace": _dns_label_errors,
    "Service": _dns_1035_errors,
    "Role": _path_segment_errors,
    "ClusterRole": _path_segment_errors,
    "RoleBinding": _path_segment_errors,
    "ClusterRoleBinding": _path_segment_errors,
}


def _mask_trailing_dash(name: str) -> str:
    # A generateName prefix may end in "-": the generated suffix will follow it.
    return name[:-1] + "a" if len(name) > 1 and name.endswith("-") else name


def _metadata_causes(metadata: Mapping, kind: str) -> list[Cause]:
    """ValidateObjectMeta for a new object. A bare generateName is fine: the name comes later."""
    causes = []
    name_errors = _NAME_RULES.get(kind, dns_subdomain_errors)
    name, generate_name = metadata.get("name") or "", metadata.get("generateName") or ""
    if generate_name:
        for message in name_errors(_mask_trailing_dash(generate_name)):
            causes.append(_cause(INVALID, "metadata.generateName", generate_name, message))
    if name:
        causes += [_cause(INVALID, "metadata.name", name, message) for message in name_errors(name)]
    elif not generate_name:
        causes.append(_cause(REQUIRED, "metadata.name", detail="name or generateName is required"))
    return causes + _labels_and_annotations_causes(metadata, "metadata")


def _labels_and_annotations_causes(metadata: Mapping, path: str) -> list[Cause]:
    causes = _labels_causes(metadata.get("labels") or {}, f"{path}.labels")
    annotations = metadata.get("annotations") or {}
    for key in annotations:
        causes += [
            _cause(INVALID, f"{path}.annotations", key, m) for m in validate_label_key(key.lower())
        ]
    if sum(len(k) + len(str(v)) for k, v in annotations.items()) > 256 * 1024:
        causes.append(
            _cause(TOO_LONG, f"{path}.annotations", detail="may not be more than 262144 bytes")
        )
    return causes


def _labels_causes(labels: Mapping, path: str) -> list[Cause]:
    causes = []
    for key, value in labels.items():
        causes += [_cause(INVALID, path, key, message) for message in validate_label_key(key)]
        if isinstance(value, str):
            causes += [
                _cause(INVALID, path, value, message) for message in validate_label_value(value)
            ]
    return causes


# -- validation: resources ------------------------------------------------------------------

_STANDARD_CONTAINER_RESOURCES = {"cpu", "memory", "ephemeral-storage"}
_STANDARD_RESOURCES = _STANDARD_CONTAINER_RESOURCES | {
    "pods", "services", "replicationcontrollers", "resourcequotas", "secrets", "configmaps",
    "persistentvolumeclaims", "storage", "requests.cpu", "requests.memory", "requests.storage",
    "requests.ephemeral-storage", "limits.cpu", "limits.memory", "limits.ephemeral-storage",
    "services.nodeports", "services.loadbalancers",
}  # fmt: skip


def _overcommit_allowed(name: str) -> bool:
    return is_native(name) and not is_hugepages(name)


def _resource_name_causes(name: str, path: str) -> list[Cause]:
    if errors := validate_label_key(name):
        return [_cause(INVALID, path, name, message) for message in errors]
    causes = []
    if "/" not in name:
        if name not in _STANDARD_RESOURCES and not is_hugepages(name):
            causes.append(
                _cause(INVALID, path, name, "must be a standard resource type or fully qualified")
            )
        if name not in _STANDARD_CONTAINER_RESOURCES and not is_hugepages(name):
            causes.append(_cause(INVALID, path, name, "must be a standard resource for containers"))
    elif not is_native(name) and not is_extended_resource(name):
        causes.append(_cause(INVALID, path, name, "doesn't follow extended resource name standard"))
    return causes


def _quantity_value_causes(name: str, raw: object, path: str) -> list[Cause]:
    value = _quantity(raw)
    if value is None:
        return []  # reported while decoding
    causes = []
    if value < 0:
        causes.append(
            _cause(INVALID, path, quantity_string(raw), "must be greater than or equal to 0")
        )
    if is_extended_resource(name) and math.ceil(value * 1000) % 1000:
        causes.append(_cause(INVALID, path, _quantity_struct(raw), "must be an integer"))
    return causes


def _resources_causes(resources: Mapping, path: str) -> list[Cause]:
    """validateResourceRequirements (Go iterates maps randomly; we go in name order)."""
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    limits_path, requests_path = f"{path}.limits", f"{path}.requests"
    causes = []
    for name in sorted(limits):
        causes += _resource_name_causes(name, f"{limits_path}[{name}]")
        causes += _quantity_value_causes(name, limits[name], f"{limits_path}[{name}]")
    for name in sorted(requests):
        causes += _resource_name_causes(name, f"{requests_path}[{name}]")
        causes += _quantity_value_causes(name, requests[name], f"{requests_path}[{name}]")
        request = _quantity(requests[name])
        if name in limits:
            limit = _quantity(limits[name])
            if request is None or limit is None:
                continue
            shown = quantity_string(requests[name])
            if request != limit and not _overcommit_allowed(name):
                detail = f"must be equal to {name} limit of {quantity_string(limits[name])}"
                causes.append(_cause(INVALID, requests_path, shown, detail))
            elif request > limit:
                detail = (
                    f"must be less than or equal to {name} limit of {quantity_string(limits[name])}"
                )
                causes.append(_cause(INVALID, requests_path, shown, detail))
        elif not _overcommit_allowed(name):
            causes.append(
                _cause(
                    REQUIRED,
                    limits_path,
                    detail="Limit must be set for non overcommitable resources",
                )
            )
    names = set(limits) | set(requests)
    if any(map(is_hugepages, names)) and not names & {"cpu", "memory"}:
        causes.append(_cause(FORBIDDEN, path, detail="HugePages require cpu or memory"))
    return causes


# -- validation: pods -----------------------------------------------------------------------

_RESTART_POLICIES = ["Always", "OnFailure", "Never"]
_DNS_POLICIES = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"]
_PULL_POLICIES = ["Always", "IfNotPresent", "Never"]
_PROTOCOLS = ["SCTP", "TCP", "UDP"]
_TERMINATION_MESSAGE_POLICIES = ["File", "FallbackToLogsOnError"]
_TAINT_EFFECTS = ["NoSchedule", "PreferNoSchedule", "NoExecute"]


def _port_name_errors(name: str) -> list[str]:
    errors = ["must be no more than 15 characters"] if len(name) > 15 else []
    if not re.fullmatch("[-a-z0-9]+", name):
        errors.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not re.search("[a-z]", name):
        errors.append("must contain at least one letter (a-z)")
    if "--" in name:
        errors.append("must not contain consecutive hyphens")
    if name.startswith("-") or name.endswith("-"):
        errors.append("must not begin or end with a hyphen")
    return errors


def _container_causes(
    container: Mapping, path: str, init: bool, volume_names: set[str]
) -> list[Cause]:
    causes = []
    image = container.get("image") or ""
    if not image:
        causes.append(_cause(REQUIRED, f"{path}.image"))
    elif image != image.strip():
        causes.append(
            _cause(INVALID, f"{path}.image", image, "must not have leading or trailing whitespace")
        )
    policy = container.get("imagePullPolicy")
    if policy and policy not in _PULL_POLICIES:
        causes.append(_not_supported(f"{path}.imagePullPolicy", policy, _PULL_POLICIES))
    message_policy = container.get("terminationMessagePolicy")
    if message_policy and message_policy not in _TERMINATION_MESSAGE_POLICIES:
        causes.append(
            _not_supported(
                f"{path}.terminationMessagePolicy", message_policy, _TERMINATION_MESSAGE_POLICIES
            )
        )
    restart = container.get("restartPolicy")
    if restart is not None and not init:
        causes.append(
            _cause(
                FORBIDDEN, f"{path}.restartPolicy", detail="may not be set for non-init containers"
            )
        )
    elif restart is not None and restart != "Always":
        causes.append(_not_supported(f"{path}.restartPolicy", restart, ["Always"]))
    port_names: set[str] = set()
    for index, port in enumerate(container.get("ports") or []):
        port_path = f"{path}.ports[{index}]"
        if name := port.get("name"):
            causes += [
                _cause(INVALID, f"{port_path}.name", name, m) for m in _port_name_errors(name)
            ]
            if name in port_names:
                causes.append(_cause(DUPLICATE, f"{port_path}.name", name))
            port_names.add(name)
        for key in ("containerPort", "hostPort"):
            number = port.get(key)
            if (
                isinstance(number, int)
                and (number != 0 or key == "containerPort")
                and not 0 < number < 65536
            ):
                causes.append(
                    _cause(
                        INVALID,
                        f"{port_path}.{key}",
                        number,
                        "must be between 1 and 65535, inclusive",
                    )
                )
        protocol = port.get("protocol")
        if protocol and protocol not in _PROTOCOLS:
            causes.append(_not_supported(f"{port_path}.protocol", protocol, _PROTOCOLS))
    for index, env in enumerate(container.get("env") or []):
        if not env.get("name"):
            causes.append(_cause(REQUIRED, f"{path}.env[{index}].name"))
    mount_paths: set[str] = set()
    for index, mount in enumerate(container.get("volumeMounts") or []):
        mount_path = f"{path}.volumeMounts[{index}]"
        name = mount.get("name") or ""
        if not name:
            causes.append(_cause(REQUIRED, f"{mount_path}.name"))
        elif name not in volume_names:
            causes.append(_cause(NOT_FOUND, f"{mount_path}.name", name))
        target = mount.get("mountPath") or ""
        if not target:
            causes.append(_cause(REQUIRED, f"{mount_path}.mountPath"))
        elif target in mount_paths:
            causes.append(_cause(INVALID, f"{mount_path}.mountPath", target, "must be unique"))
        mount_paths.add(target)
    causes += _resources_causes(container.get("resources") or {}, f"{path}.resources")
    return causes


def _go_toleration(toleration: Mapping) -> _GoText:
    seconds = toleration.get("tolerationSeconds")
    rendered_seconds = "(*int64)(nil)" if seconds is None else f"(*int64)({seconds})"
    fields = ", ".join(
        f"{go_name}:{json.dumps(toleration.get(key) or '')}"
        for key, go_name in (
            ("key", "Key"),
            ("operator", "Operator"),
            ("value", "Value"),
            ("effect", "Effect"),
        )
    )
    return _GoText(f"core.Toleration{{{fields}, TolerationSeconds:{rendered_seconds}}}")


def _toleration_causes(tolerations: list, path: str) -> list[Cause]:
    causes = []
    for index, toleration in enumerate(tolerations):
        item = f"{path}[{index}]"
        key, operator = toleration.get("key") or "", toleration.get("operator") or ""
        value, effect = toleration.get("value") or "", toleration.get("effect") or ""
        if key:
            causes += [_cause(INVALID, f"{item}.key", key, m) for m in validate_label_key(key)]
        if not key and operator != "Exists":
            detail = 'operator must be Exists when `key` is empty, which means "match all values and all keys"'
            causes.append(_cause(INVALID, f"{item}.operator", operator, detail))
        if toleration.get("tolerationSeconds") is not None and effect != "NoExecute":
            detail = "effect must be 'NoExecute' when `tolerationSeconds` is set"
            causes.append(_cause(INVALID, f"{item}.effect", effect, detail))
        if operator in ("Equal", ""):
            if errors := validate_label_value(value):
                causes.append(_cause(INVALID, f"{item}.operator", value, ";".join(errors)))
        elif operator == "Exists":
            if value:
                detail = "value must be empty when `operator` is 'Exists'"
                causes.append(
                    _cause(INVALID, f"{item}.operator", _go_toleration(toleration), detail)
                )
        else:
            causes.append(_not_supported(f"{item}.operator", operator, ["Equal", "Exists"]))
        if effect and effect not in _TAINT_EFFECTS:
            causes.append(_not_supported(f"{item}.effect", effect, _TAINT_EFFECTS))
    return causes


def _pod_spec_causes(spec: Mapping, path: str) -> list[Cause]:
    """ValidatePodSpec, the parts a test can trip over."""
    causes = []
    volume_names: set[str] = set()
    for index, volume in enumerate(spec.get("volumes") or []):
        name = volume.get("name") or ""
        name_path = f"{path}.volumes[{index}].name"
        if not name:
            causes.append(_cause(REQUIRED, name_path))
        else:
            causes += [
                _cause(INVALID, name_path, name, message) for message in _dns_label_errors(name)
            ]
            if name in volume_names:
                causes.append(_cause(DUPLICATE, name_path, name))
        volume_names.add(name)
    containers = spec.get("containers") or []
    if not containers and "containers" in spec:  # absent is reported by the schema
        causes.append(_cause(REQUIRED, f"{path}.containers"))
    names: set[str] = set()  # unique across init, regular and ephemeral containers
    groups = (("initContainers", True), ("containers", False), ("ephemeralContainers", False))
    for key, init in groups:
        for index, container in enumerate(spec.get(key) or []):
            item = f"{path}.{key}[{index}]"
            name = container.get("name") or ""
            if not name:
                if "name" in container:  # absent is reported by the schema
                    causes.append(_cause(REQUIRED, f"{item}.name"))
            else:
                causes += [
                    _cause(INVALID, f"{item}.name", name, m) for m in _dns_label_errors(name)
                ]
                if name in names:
                    causes.append(_cause(DUPLICATE, f"{item}.name", name))
            names.add(name)
            causes += _container_causes(container, item, init, volume_names)
    restart = spec.get("restartPolicy")
    if restart is not None and restart not in _RESTART_POLICIES:
        causes.append(
            _cause(REQUIRED, f"{path}.restartPolicy")
            if restart == ""
            else _not_supported(f"{path}.restartPolicy", restart, _RESTART_POLICIES)
        )
    dns = spec.get("dnsPolicy")
    if dns and dns not in _DNS_POLICIES:
        causes.append(_not_supported(f"{path}.dnsPolicy", dns, _DNS_POLICIES))
    causes += _labels_causes(spec.get("nodeSelector") or {}, f"{path}.nodeSelector")
    causes += _toleration_causes(spec.get("tolerations") or [], f"{path}.tolerations")
    if account := spec.get("serviceAccountName"):
        causes += [
            _cause(INVALID, f"{path}.serviceAccountName", account, message)
            for message in dns_subdomain_errors(account)
        ]
    deadline = spec.get("activeDeadlineSeconds")
    if isinstance(deadline, int) and not 0 < deadline <= 2**31 - 1:
        detail = f"must be between 1 and {2**31 - 1}, inclusive"
        causes.append(_cause(INVALID, f"{path}.activeDeadlineSeconds", deadline, detail))
    return causes


# Where each workload kind keeps its pod template: (template path, is it a Job template).
_POD_TEMPLATES = {
    "Job": (("spec", "template"), True),
    "CronJob": (("spec", "jobTemplate", "spec", "template"), True),
    "Deployment": (("spec", "template"), False),
    "ReplicaSet": (("spec", "template"), False),
    "StatefulSet": (("spec", "template"), False),
    "DaemonSet": (("spec", "template"), False),
    "PodTemplate": (("template",), False),
}


def _template_causes(obj: Mapping, kind: str) -> list[Cause]:
    keys, is_job = _POD_TEMPLATES[kind]
    template: object = obj
    for key in keys:
        template = template.get(key) if isinstance(template, Mapping) else None
    if not isinstance(template, Mapping):
        return []
    path = ".".join(keys)
    causes = _labels_and_annotations_causes(template.get("metadata") or {}, f"{path}.metadata")
    spec = template.get("spec") or {}
    causes += _pod_spec_causes(spec, f"{path}.spec")
    # Pod templates default restartPolicy to Always, which a Job refuses.
    restart = spec.get("restartPolicy") or "Always"
    if is_job and restart not in ("OnFailure", "Never"):
        causes.append(_not_supported(f"{path}.spec.restartPolicy", restart, ["OnFailure", "Never"]))
    if spec.get("ephemeralContainers"):
        detail = "ephemeral containers not allowed in pod template"
        causes.append(_cause(FORBIDDEN, f"{path}.spec.ephemeralContainers", detail=detail))
    return causes


_ACCESS_MODES = ["ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"]


def _claim_spec_causes(spec: Mapping, path: str) -> list[Cause]:
    """ValidatePersistentVolumeClaimSpec: access modes and a positive storage request."""
    causes = []
    modes = spec.get("accessModes") or []
    if not modes:
        causes.append(
            _cause(REQUIRED, f"{path}.accessModes", detail="at least 1 access mode is required")
        )
    for mode in modes:
        if mode not in _ACCESS_MODES:
            causes.append(_not_supported(f"{path}.accessModes", mode, _ACCESS_MODES))
    storage_path = f"{path}.resources[storage]"
    requests = (spec.get("resources") or {}).get("requests") or {}
    if "storage" not in requests:
        causes.append(_cause(REQUIRED, storage_path))
    elif (value := _quantity(requests["storage"])) is not None and value <= 0:
        shown = quantity_string(requests["storage"])
        causes.append(_cause(INVALID, storage_path, shown, "must be greater than zero"))
    return causes


def validate(obj: Mapping, kind: str, api_version: str) -> list[Cause]:
    """Everything the apiserver would reject about a new object; empty means it is admitted.

    Decoding problems (``Cause.origin`` decode / unknown-field) come alone, since the real
    apiserver stops there; ``request_error`` turns the list into the HTTP answer.
    """
    causes = _schema_causes(obj, kind, api_version)
    for parent, key, path in _top_level_quantity_slots(obj, kind, api_version):
        if (error := _quantity_error(parent[key])) is not None:  # type: ignore[index]
            causes.append(Cause(TYPE_INVALID, error, path, DECODE))
    decoding = [cause for cause in causes if cause.origin != VALIDATION]
    if decoding:
        return list(dict.fromkeys(decoding))
    causes += _metadata_causes(obj.get("metadata") or {}, kind)
    if kind == "Pod":
        causes += _pod_spec_causes(obj.get("spec") or {}, "spec")
    elif kind in _POD_TEMPLATES:
        causes += _template_causes(obj, kind)
    elif kind == "PersistentVolumeClaim":
        causes += _claim_spec_causes(obj.get("spec") or {}, "spec")
    return list(dict.fromkeys(causes))


# -- defaulting -----------------------------------------------------------------------------

_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
_PROBE_DEFAULTS = (
    ("timeoutSeconds", 1),
    ("periodSeconds", 10),
    ("successThreshold", 1),
    ("failureThreshold", 3),
)
_NOT_READY_TOLERATIONS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def _default(obj: dict, key: str, value: object) -> None:
    """Set ``key`` when unset; like Go's zero values, null and "" count as unset."""
    if obj.get(key) in (None, ""):
        obj[key] = value


def _image_tag(image: str) -> str:
    """The tag that decides the pull policy: "latest" when there is neither tag nor digest."""
    name, digest = image.partition("@")[::2]
    last = name.rpartition("/")[2]
    return last.rpartition(":")[2] if ":" in last else "" if digest else "latest"


def _default_container(container: dict, host_network: bool) -> None:
    _default(container, "terminationMessagePath", "/dev/termination-log")
    _default(container, "terminationMessagePolicy", "File")
    latest = _image_tag(container.get("image") or "") == "latest"
    _default(container, "imagePullPolicy", "Always" if latest else "IfNotPresent")
    _default(container, "resources", {})
    for port in container.get("ports") or []:
        _default(port, "protocol", "TCP")
        if host_network:
            _default(port, "hostPort", port.get("containerPort"))
    for env in container.get("env") or []:
        if (field_ref := (env.get("valueFrom") or {}).get("fieldRef")) is not None:
            _default(field_ref, "apiVersion", "v1")
    for probe in filter(None, (container.get(key) for key in _PROBES)):
        for key, value in _PROBE_DEFAULTS:
            _default(probe, key, value)
        if (http := probe.get("httpGet")) is not None:
            _default(http, "path", "/")
            _default(http, "scheme", "HTTP")


def _requests_from_limits(container: dict) -> None:
    # SetDefaults_Pod: a resource with a limit and no request is requested at the limit.
    resources = container.get("resources") or {}
    limits = resources.get("limits")
    if limits:
        requests = resources.get("requests") or {}
        for name, value in limits.items():
            requests.setdefault(name, value)
        resources["requests"] = requests
        container["resources"] = resources


_VOLUME_SOURCES_WITH_MODE = ("secret", "configMap", "projected", "downwardAPI")
_POD_SPEC_DEFAULTS = (
    ("restartPolicy", "Always"),
    ("dnsPolicy", "ClusterFirst"),
    ("schedulerName", "default-scheduler"),
    ("terminationGracePeriodSeconds", 30),
    ("securityContext", {}),
    ("enableServiceLinks", True),
)


def _default_volume(volume: dict) -> None:
    if not any(value is not None for key, value in volume.items() if key != "name"):
        volume["emptyDir"] = {}  # a volume without a source is an emptyDir
    for source in _VOLUME_SOURCES_WITH_MODE:
        if isinstance(volume.get(source), dict):
            _default(volume[source], "defaultMode", 420)
    if isinstance(volume.get("hostPath"), dict):
        volume["hostPath"].setdefault("type", "")


def _default_pod_spec(spec: dict) -> None:
    """The v1 defaulters of a PodSpec (a Pod's or a template's), in place."""
    host_network = bool(spec.get("hostNetwork"))
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            _requests_from_limits(container)
            _default_container(container, host_network)
    for container in spec.get("ephemeralContainers") or []:
        _default_container(container, host_network)
    for volume in spec.get("volumes") or []:
        _default_volume(volume)
    for key, value in _POD_SPEC_DEFAULTS:
        _default(spec, key, copy.copy(value))  # never share the {} between pods


JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
_LEGACY_JOB_NAME_LABEL = "job-name"
_LEGACY_CONTROLLER_UID_LABEL = "controller-uid"


def default_job(obj: Mapping) -> dict:
    """A new Job as the apiserver stores it: batch/v1 ``SetDefaults_Job`` and the Job
    strategy's generated selector (it names the Job's uid, so the uid must be set), with the
    template's labels copied to a Job that has none, as the stored object reads back."""
    job = copy.deepcopy(dict(obj))
    meta = job.setdefault("metadata", {})
    spec = job.setdefault("spec", {})
    if not isinstance(spec, dict):
        return job
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
        spec["parallelism"] = 1
    if spec.get("parallelism") is None:
        spec["parallelism"] = 1
    if spec.get("backoffLimit") is None:
        spec["backoffLimit"] = 2**31 - 1 if spec.get("backoffLimitPerIndex") is not None else 6
    _default(spec, "completionMode", "NonIndexed")
    if spec.get("suspend") is None:
        spec["suspend"] = False
    policy = spec.get("podFailurePolicy")
    if isinstance(policy, dict):
        for rule in policy.get("rules") or []:
            for pattern in rule.get("onPodConditions") or []:
                _default(pattern, "status", "True")
    replacement = "Failed" if policy is not None else "TerminatingOrFailed"
    _default(spec, "podReplacementPolicy", replacement)
    template = spec.get("template")
    if isinstance(template, dict):
        template_meta = template.setdefault("metadata", {})
        if not spec.get("manualSelector") and meta.get("uid"):
            uid, name = meta["uid"], meta.get("name", "")
            spec["selector"] = {"matchLabels": {CONTROLLER_UID_LABEL: uid}}
            labels = template_meta.setdefault("labels", {})
            labels.update(
                {
                    _LEGACY_CONTROLLER_UID_LABEL: uid,
                    CONTROLLER_UID_LABEL: uid,
                    _LEGACY_JOB_NAME_LABEL: name,
                    JOB_NAME_LABEL: name,
                }
            )
        if isinstance(template.get("spec"), dict):
            _default_pod_spec(template["spec"])
        if template_meta.get("labels") and not meta.get("labels"):
            meta["labels"] = dict(template_meta["labels"])
    job["status"] = {}
    return job


def default_pod(obj: Mapping) -> dict:
    """A new Pod as the apiserver stores it: v1 defaulting plus the default admission plugins
    (ServiceAccount, Priority, DefaultTolerationSeconds). Returns a new dict."""
    pod = copy.deepcopy(dict(obj))
    _default(pod, "spec", {})
    spec = pod["spec"]
    _default_pod_spec(spec)
    # ServiceAccount admission; v1 also mirrors the name into the deprecated serviceAccount.
    account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    spec["serviceAccountName"] = spec["serviceAccount"] = account
    if not spec.get("priorityClassName"):  # Priority admission, no PriorityClass in play
        _default(spec, "priority", 0)
    _default(spec, "preemptionPolicy", "PreemptLowerPriority")
    _default(spec, "tolerations", [])
    tolerations = spec["tolerations"]
    for key in _NOT_READY_TOLERATIONS:
        covered = any(
            t.get("key") in (key, None, "") and t.get("effect") in ("NoExecute", None, "")
            for t in tolerations
        )
        if not covered:
            tolerations.append(
                {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            )
    _default(pod, "status", {})
    _default(pod["status"], "phase", "Pending")
    pod["status"]["qosClass"] = pod_qos_class(pod)
    return pod


# v1 defaulters of the storage kinds: (kind, field under spec or the top, default).
_STORAGE_DEFAULTS = {
    "PersistentVolumeClaim": (("spec", "volumeMode", "Filesystem"),),
    "PersistentVolume": (
        ("spec", "persistentVolumeReclaimPolicy", "Retain"),
        ("spec", "volumeMode", "Filesystem"),
    ),
    "StorageClass": (("", "reclaimPolicy", "Delete"), ("", "volumeBindingMode", "Immediate")),
}


def default_object(obj: Mapping, kind: str) -> dict:
    """An object of any kind as the v1 defaulters leave it; a new dict (Pods: ``default_pod``)."""
    if kind == "Pod":
        return default_pod(obj)
    if kind == "Job":
        return default_job(obj)
    new = copy.deepcopy(dict(obj))
    for where, key, value in _STORAGE_DEFAULTS.get(kind, ()):
        parent = new.setdefault(where, {}) if where else new
        if isinstance(parent, dict):
            _default(parent, key, value)
    return new


def pod_qos_class(pod: Mapping) -> str:
    """Guaranteed, Burstable or BestEffort, computed like k8s.io/kubernetes pkg/apis/core/helper/qos."""
    spec = pod.get("spec") or {}
    requests: dict[str, Decimal] = {}
    limits: dict[str, Decimal] = {}
    guaranteed = True
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        resources = container.get("resources") or {}
        for name, raw in (resources.get("requests") or {}).items():
            if name in ("cpu", "memory") and (value := _quantity(raw)) and value > 0:
                requests[name] = requests.get(name, Decimal(0)) + value
        found = set()
        for name, raw in (resources.get("limits") or {}).items():
            if name in ("cpu", "memory") and (value := _quantity(raw)) and value > 0:
                found.add(name)
                limits[name] = limits.get(name, Decimal(0)) + value
        if found != {"cpu", "memory"}:
            guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if guaranteed and requests == limits:
        return "Guaranteed"
    return "Burstable"
