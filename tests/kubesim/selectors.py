"""Label and field selectors, parsed and matched the way the Kubernetes API server does.

Label selectors follow k8s.io/apimachinery/pkg/labels (the lexer, the grammar and the error
texts); field selectors follow k8s.io/apimachinery/pkg/fields plus the apiserver's check that
every field is one the resource supports. Both raise ``SelectorError``; the apiserver answers
such a selector with 400 BadRequest and the error text as the message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "FieldRequirement",
    "FieldSelector",
    "LabelRequirement",
    "LabelSelector",
    "SelectorError",
    "dns_subdomain_errors",
    "field_value",
    "go_int64",
    "label_selector_from_object",
    "new_requirement",
    "parse_field_selector",
    "parse_label_selector",
    "regex_error",
    "validate_label_key",
    "validate_label_value",
]


class SelectorError(ValueError):
    """A selector the apiserver would reject; ``str()`` is the apiserver's message."""


# -- label keys and values (k8s.io/apimachinery/pkg/util/validation) ------------------------

_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_NAME_RE = re.compile(_NAME_FMT)
_VALUE_FMT = f"({_NAME_FMT})?"
_DNS_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"
_DNS_SUBDOMAIN_RE = re.compile(_DNS_SUBDOMAIN)


def regex_error(message: str, fmt: str, *examples: str) -> str:
    """Go's ``validation.RegexError``, double space after each example comma included."""
    if not examples:
        return f"{message} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{example}', " for example in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{fmt}')"


def dns_subdomain_errors(value: str) -> list[str]:
    errors = ["must be no more than 253 characters"] if len(value) > 253 else []
    if not _DNS_SUBDOMAIN_RE.fullmatch(value):
        errors.append(
            regex_error(
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character",
                _DNS_SUBDOMAIN,
                "example.com",
            )
        )
    return errors


_NAME_PART_ERROR = regex_error(
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character",
    _NAME_FMT,
    "MyName",
    "my.name",
    "123-abc",
)


def validate_label_key(key: str) -> list[str]:
    """``IsQualifiedName``: an optional DNS-subdomain prefix, '/', and a 63-character name."""
    parts = key.split("/")
    if len(parts) > 2:
        return [
            f"a qualified name {_NAME_PART_ERROR} with an optional DNS subdomain prefix and '/' "
            "(e.g. 'example.com/MyName')"
        ]
    errors: list[str] = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            errors += [f"prefix part {msg}" for msg in dns_subdomain_errors(prefix)]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    if not _NAME_RE.fullmatch(name):
        errors.append(f"name part {_NAME_PART_ERROR}")
    return errors


def validate_label_value(value: str) -> list[str]:
    errors = ["must be no more than 63 characters"] if len(value) > 63 else []
    if value and not _NAME_RE.fullmatch(value):
        errors.append(
            regex_error(
                "a valid label must be an empty string or consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric character",
                _VALUE_FMT,
                "MyValue",
                "my_value",
                "12345",
            )
        )
    return errors


def _go_quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


# -- label selectors --------------------------------------------------------------------------

_BINARY_OPERATORS = "in, notin, =, ==, !=, gt, lt"  # what parseOperator says it expected


_INT64_RE = re.compile(r"[+-]?[0-9]+")


def go_int64(text: str) -> int | None:
    """``strconv.ParseInt(text, 10, 64)``; None where Go fails (no spaces, no "_", in range)."""
    if not _INT64_RE.fullmatch(text):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    operator: str  # in notin = == != gt lt exists !  ("!" is DoesNotExist)
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op, present = self.operator, self.key in labels
        if op in ("in", "=", "=="):
            return present and labels[self.key] in self.values
        if op in ("notin", "!="):
            return not present or labels[self.key] not in self.values
        if op == "exists":
            return present
        if op == "!":
            return not present
        if not present:  # gt / lt compare integers; a non-integer label never matches
            return False
        actual, wanted = go_int64(labels[self.key]), go_int64(self.values[0])
        if actual is None or wanted is None:
            return False
        return actual > wanted if op == "gt" else actual < wanted


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[LabelRequirement, ...] = ()
    matches_nothing: bool = False  # a nil LabelSelector object selects nothing

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if self.matches_nothing:
            return False
        labels = labels or {}
        return all(requirement.matches(labels) for requirement in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements and not self.matches_nothing

    def exact_value(self, key: str) -> str | None:
        """The value ``key`` must have (``key=v`` or ``key in (v)``), like RequiresExactMatch."""
        for requirement in self.requirements:
            if requirement.key == key:
                exact = requirement.operator in ("=", "==", "in") and len(requirement.values) == 1
                return requirement.values[0] if exact else None
        return None


# Lexer tokens: literal text of special symbols and keywords.
_SPECIAL = set("=!(),><")
_WHITESPACE = set(" \t\r\n")
_SYMBOLS = {
    "(": "(",
    ")": ")",
    ",": ",",
    "!": "!",
    "==": "==",
    "=": "=",
    "!=": "!=",
    ">": "gt",
    "<": "lt",
}
_KEYWORDS = {"in": "in", "notin": "notin"}
_ID, _END, _ERROR = "id", "end", "error"


def _lex(text: str) -> list[tuple[str, str]]:
    """Tokens as (kind, literal); kind is _ID, _END, _ERROR or the symbol/keyword itself."""
    tokens, pos = [], 0
    while True:
        while pos < len(text) and text[pos] in _WHITESPACE:
            pos += 1
        if pos >= len(text):
            tokens.append((_END, ""))
            return tokens
        if text[pos] in _SPECIAL:
            # Longest run of special characters that still forms a known symbol.
            buffer, last = "", None
            while pos < len(text) and text[pos] in _SPECIAL:
                buffer += text[pos]
                if buffer in _SYMBOLS:
                    last, pos = buffer, pos + 1
                elif last is not None:
                    break
                else:
                    pos += 1
            if last is None:
                tokens.append((_ERROR, f"error expected: keyword found '{buffer}'"))
            else:
                tokens.append((_SYMBOLS[last], last))
            continue
        start = pos
        while pos < len(text) and text[pos] not in _SPECIAL and text[pos] not in _WHITESPACE:
            pos += 1
        word = text[start:pos]
        tokens.append((_KEYWORDS.get(word, _ID), word))


class _LabelParser:
    def __init__(self, text: str) -> None:
        self.tokens = _lex(text)
        self.pos = 0

    def peek(self, values_context: bool = True) -> tuple[str, str]:
        return self._as(self.tokens[self.pos], values_context)

    def take(self, values_context: bool = True) -> tuple[str, str]:
        token = self.tokens[self.pos]
        self.pos += 1
        return self._as(token, values_context)

    @staticmethod
    def _as(token: tuple[str, str], values_context: bool) -> tuple[str, str]:
        # In a value position "in" and "notin" are ordinary identifiers.
        if values_context and token[0] in ("in", "notin"):
            return _ID, token[1]
        return token

    def parse(self) -> list[LabelRequirement]:
        requirements: list[LabelRequirement] = []
        while True:
            kind, literal = self.peek()
            if kind == _END:
                return requirements
            if kind not in (_ID, "!"):
                raise SelectorError(
                    f"found '{literal}', expected: !, identifier, or 'end of string'"
                )
            try:
                requirements.append(self.requirement())
            except SelectorError as err:
                raise SelectorError(f"unable to parse requirement: {err}") from None
            kind, literal = self.take()
            if kind == _END:
                return requirements
            if kind != ",":
                raise SelectorError(f"found '{literal}', expected: ',' or 'end of string'")
            kind, literal = self.peek()
            if kind not in (_ID, "!"):
                raise SelectorError(f"found '{literal}', expected: identifier after ','")

    def requirement(self) -> LabelRequirement:
        kind, key = self.take()
        operator = None
        if kind == "!":
            operator = "!"
            kind, key = self.take()
        if kind != _ID:
            raise SelectorError(f"found '{key}', expected: identifier")
        key_errors = validate_label_key(key)
        if key_errors:  # the parser's field path is nil, which Go prints as "<nil>"
            raise SelectorError(f"<nil>: Invalid value: {_go_quote(key)}: {'; '.join(key_errors)}")
        if operator == "!" or self.peek()[0] in (_END, ","):
            # "!key" ends the requirement even when more follows; parse() then rejects it.
            return new_requirement(key, operator or "exists", [])
        kind, literal = self.take(values_context=False)
        if kind not in ("in", "notin", "=", "==", "!=", "gt", "lt"):
            raise SelectorError(f"found '{literal}', expected: {_BINARY_OPERATORS}")
        operator = kind
        values = self.value_set() if operator in ("in", "notin") else self.exact_value()
        return new_requirement(key, operator, values)

    def value_set(self) -> list[str]:
        kind, literal = self.take()
        if kind != "(":
            raise SelectorError(f"found '{literal}' expected: '('")
        kind, literal = self.peek()
        if kind == ")":
            self.take()
            return [""]
        if kind not in (_ID, ","):
            raise SelectorError(f"found '{literal}', expected: ',', ')' or identifier")
        values: list[str] = []
        while True:  # comma separated, possibly empty identifiers
            kind, literal = self.take()
            if kind == _ID:
                values.append(literal)
                after, after_literal = self.peek()
                if after == ")":
                    break
                if after != ",":
                    raise SelectorError(f"found '{after_literal}', expected: ',' or ')'")
            elif kind == ",":
                after = self.peek()[0]
                if not values or after in (")", ","):
                    values.append("")
                if after == ")":
                    break
            else:
                raise SelectorError(f"found '{literal}', expected: ',', or identifier")
        self.take()  # ")"
        return sorted(set(values))

    def exact_value(self) -> list[str]:
        if self.peek()[0] in (_END, ","):
            return [""]
        kind, literal = self.take()
        if kind != _ID:
            raise SelectorError(f"found '{literal}', expected: identifier")
        return [literal]


def _go_strings(values: list[str]) -> str:
    """A []string as Go's %#v prints it inside field errors."""
    return "[]string{" + ", ".join(_go_quote(value) for value in values) + "}"


def new_requirement(
    key: str, operator: str, values: list[str], check_key: bool = False
) -> LabelRequirement:
    """NewRequirement: operator-specific value checks, then every value must be a label value."""
    errors = []
    if check_key and (key_errors := validate_label_key(key)):
        errors.append(f"key: Invalid value: {_go_quote(key)}: {'; '.join(key_errors)}")
    if operator in ("in", "notin") and not values:
        errors.append(
            "values: Invalid value: []string(nil): for 'in', 'notin' operators, "
            "values set can't be empty"
        )
    if operator in ("exists", "!") and values:
        errors.append(
            f"values: Invalid value: {_go_strings(values)}: "
            "values set must be empty for exists and does not exist"
        )
    if operator in ("gt", "lt"):
        if len(values) != 1:
            errors.append(
                f"values: Invalid value: {_go_strings(values)}: "
                "for 'Gt', 'Lt' operators, exactly one value is required"
            )
        errors += [
            f"values[{index}]: Invalid value: {_go_quote(value)}: "
            "for 'Gt', 'Lt' operators, the value must be an integer"
            for index, value in enumerate(values)
            if go_int64(value) is None
        ]
    for index, value in enumerate(values):
        if value_errors := validate_label_value(value):
            errors.append(
                f"values[{index}][{key}]: Invalid value: {_go_quote(value)}: "
                + "; ".join(value_errors)
            )
    if errors:
        raise SelectorError(errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]")
    return LabelRequirement(key, operator, tuple(values))


def parse_label_selector(text: str) -> LabelSelector:
    """Parse a ``labelSelector`` query value; the empty string selects everything."""
    requirements = _LabelParser(text).parse()
    requirements.sort(key=lambda requirement: requirement.key)  # the apiserver sorts by key
    return LabelSelector(tuple(requirements))


_EXPRESSION_OPERATORS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}


def label_selector_from_object(selector: Mapping | None) -> LabelSelector:
    """A ``metav1.LabelSelector`` (matchLabels / matchExpressions), as LabelSelectorAsSelector.

    ``None`` selects nothing and ``{}`` selects everything, as in the apiserver.
    """
    if selector is None:
        return LabelSelector(matches_nothing=True)
    requirements = [
        new_requirement(key, "=", [value], check_key=True)
        for key, value in (selector.get("matchLabels") or {}).items()
    ]
    for expression in selector.get("matchExpressions") or []:
        operator = expression.get("operator", "")
        if operator not in _EXPRESSION_OPERATORS:
            raise SelectorError(f"{_go_quote(operator)} is not a valid label selector operator")
        requirements.append(
            new_requirement(
                expression.get("key", ""),
                _EXPRESSION_OPERATORS[operator],
                list(expression.get("values") or []),
                check_key=True,
            )
        )
    requirements.sort(key=lambda requirement: requirement.key)
    return LabelSelector(tuple(requirements))


# -- field selectors --------------------------------------------------------------------------

# Fields the apiserver renders with strconv.FormatBool, so an unset one reads "false".
_BOOLEAN_FIELDS = {"spec.hostNetwork", "spec.unschedulable"}


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    negated: bool = False


def field_value(obj: Mapping, path: str) -> str:
    """A dotted path into the object as the apiserver's field set renders it; missing is ""."""
    node: object = obj
    for part in path.split("."):
        if not isinstance(node, Mapping) or node.get(part) is None:
            return "false" if path in _BOOLEAN_FIELDS else ""
        node = node[part]
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Mapping) -> bool:
        return all(
            (field_value(obj, requirement.field) == requirement.value) != requirement.negated
            for requirement in self.requirements
        )

    @property
    def empty(self) -> bool:
        return not self.requirements

    def exact_value(self, field: str) -> str | None:
        """The value ``field`` must equal (``field=value``); None when not pinned that way."""
        for requirement in self.requirements:
            if requirement.field == field and not requirement.negated:
                return requirement.value
        return None


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not escaped with a backslash."""
    terms, start, escaped = [], 0, False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            terms.append(text[start:index])
            start = index + 1
    terms.append(text[start:])
    return terms


def _unescape(value: str) -> str:
    """fields.UnescapeValue: ``\\\\``, ``\\,`` and ``\\=`` are escapes; a bare ``,`` or ``=`` is not."""
    out, index = [], 0
    while index < len(value):
        char = value[index]
        if char == "\\":
            following = value[index + 1 : index + 2]
            if following not in ("\\", ",", "="):
                sequence = "\\" + following
                raise SelectorError(f"invalid field selector: invalid escape sequence: {sequence}")
            out.append(following)
            index += 2
            continue
        if char in ",=":  # Go prints the rune as a number
            raise SelectorError(
                f"invalid field selector: unescaped character in value: {ord(char)}"
            )
        out.append(char)
        index += 1
    return "".join(out)


def parse_field_selector(text: str, supported: set[str] | frozenset[str]) -> FieldSelector:
    """Parse a ``fieldSelector`` query value against the fields this resource supports.

    Nothing is trimmed: ``spec.nodeName = x`` names the field ``"spec.nodeName "``, as in Go.
    """
    requirements = []
    for term in sorted(_split_terms(text)):
        if not term:
            continue
        for index in range(len(term)):
            operator = next((op for op in ("!=", "==", "=") if term.startswith(op, index)), None)
            if operator:
                field, raw_value = term[:index], term[index + len(operator) :]
                break
        else:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        requirements.append(FieldRequirement(field, _unescape(raw_value), operator == "!="))
    # The apiserver converts field labels only after the whole selector has parsed.
    for requirement in requirements:
        if requirement.field not in supported:
            raise SelectorError(f"field label not supported: {requirement.field}")
    return FieldSelector(tuple(requirements))
