"""The project's RunPod schema (tests/runpod_fake/runpod.graphql) and the GraphQL the project
sends: every operation validates against that schema, and, where a fuller transcription of
RunPod's schema is at hand (../shared in CI), the project's schema is a faithful part of it
and every operation validates against it too."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import graphql
import pytest

from tests.conftest import shared_file
from tests.runpod.conftest import client_for
from tests.runpod_fake import SCHEMA_PATH, RunPodFake, load_schema
from thinkube_core.runpod import PodRequest

ROOT = Path(__file__).resolve().parents[2]
TRANSCRIPTION = "fixtures/runpod/schema.graphql"
# Where the project keeps GraphQL it sends to RunPod.
SENDING_PACKAGES = ("thinkube_core", "thinkube_spawner", "hub_service")
OPERATION = re.compile(r"^\s*(query|mutation|subscription)\s+\w+", re.MULTILINE)


def project_operations() -> dict[str, str]:
    """Every GraphQL operation the project's code defines, by operation name: the
    module-level strings that hold one, in every module whose source contains one."""
    found: dict[str, str] = {}
    for package in SENDING_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not OPERATION.search(path.read_text()):
                continue
            module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
            for value in vars(module).values():
                if not isinstance(value, str) or not OPERATION.match(value):
                    continue
                document = graphql.parse(value)
                for definition in document.definitions:
                    if isinstance(definition, graphql.OperationDefinitionNode):
                        found[definition.name.value] = value
    return found


def _walk(node):
    yield node
    for key in node.keys:
        value = getattr(node, key, None)
        for child in value if isinstance(value, tuple | list) else [value]:
            if isinstance(child, graphql.Node):
                yield from _walk(child)


def _required(argument: graphql.GraphQLArgument | graphql.GraphQLInputField) -> bool:
    return graphql.is_non_null_type(argument.type) and argument.default_value is graphql.Undefined


def subset_problems(ours: graphql.GraphQLSchema, theirs: graphql.GraphQLSchema) -> list[str]:
    """How `ours` departs from being a part of `theirs` (pure; empty when it is one): every
    type of ours exists there as the same kind; every field, argument and input field with
    the same type, non-null and list wrappers included; enum values there too; and nothing
    that is required there is missing here (a request valid here would be refused there)."""
    problems: list[str] = []
    for root in ("query_type", "mutation_type", "subscription_type"):
        mine, other = getattr(ours, root), getattr(theirs, root)
        if mine is not None and (other is None or other.name != mine.name):
            problems.append(f"root {root}: {mine.name} here, {other and other.name} there")
    for name, mine in sorted(ours.type_map.items()):
        if name.startswith("__"):
            continue
        other = theirs.type_map.get(name)
        if other is None:
            problems.append(f"type {name} does not exist there")
            continue
        if type(mine) is not type(other):
            problems.append(
                f"type {name} is a {type(mine).__name__} here, {type(other).__name__} there"
            )
            continue
        if isinstance(mine, graphql.GraphQLEnumType):
            for value in sorted(set(mine.values) - set(other.values)):
                problems.append(f"enum {name} has no value {value} there")
        elif isinstance(mine, graphql.GraphQLObjectType | graphql.GraphQLInterfaceType):
            for field_name, field in mine.fields.items():
                where = f"{name}.{field_name}"
                their_field = other.fields.get(field_name)
                if their_field is None:
                    problems.append(f"field {where} does not exist there")
                    continue
                if str(field.type) != str(their_field.type):
                    problems.append(f"field {where} is {field.type} here, {their_field.type} there")
                problems += _argument_problems(where, field.args, their_field.args)
        elif isinstance(mine, graphql.GraphQLInputObjectType):
            problems += _argument_problems(f"input {name}", mine.fields, other.fields, "field")
        elif isinstance(mine, graphql.GraphQLUnionType):
            theirs_members = {t.name for t in other.types}
            for member in mine.types:
                if member.name not in theirs_members:
                    problems.append(f"union {name} has no member {member.name} there")
    return problems


def _argument_problems(where: str, mine: dict, theirs: dict, kind: str = "argument") -> list[str]:
    problems = []
    for arg_name, arg in mine.items():
        other = theirs.get(arg_name)
        if other is None:
            problems.append(f"{kind} {where}({arg_name}) does not exist there")
        elif str(arg.type) != str(other.type):
            problems.append(f"{kind} {where}({arg_name}) is {arg.type} here, {other.type} there")
    for arg_name, other in theirs.items():
        if arg_name not in mine and _required(other):
            problems.append(f"{kind} {where}({arg_name}) is required there and missing here")
    return problems


# -- without any reference data ---------------------------------------------------


def test_the_project_sends_these_operations():
    assert sorted(project_operations()) == [
        "DeployOnDemand",
        "GpuTypes",
        "MyPods",
        "Myself",
        "Pod",
        "RentInterruptable",
        "Stop",
        "Terminate",
        "ThinkubeReaperPods",
    ]


def test_every_operation_validates_against_the_projects_schema():
    schema = load_schema()
    for name, query in project_operations().items():
        document = graphql.parse(query)
        assert graphql.validate(schema, document) == [], name
        # Values travel as variables: the only literals are the two cloud switches (booleans).
        literals = [
            node
            for node in _walk(document)
            if isinstance(
                node, graphql.StringValueNode | graphql.IntValueNode | graphql.FloatValueNode
            )
        ]
        assert literals == [], name


def test_the_stand_in_serves_the_projects_schema():
    assert SCHEMA_PATH == ROOT / "tests" / "runpod_fake" / "runpod.graphql"
    served = graphql.print_schema(RunPodFake().schema)
    assert served == graphql.print_schema(graphql.build_schema(SCHEMA_PATH.read_text()))


SMALL = """
type Query { pod(input: PodFilter): Pod }
input PodFilter { podId: String! }
type Pod { id: String! gpus: [Gpu]! status: Status }
type Gpu { id: String }
enum Status { RUNNING EXITED }
"""


CHANGES = [
    ("id: String!", "id: String", "field Pod.id is String here, String! there"),
    ("gpus: [Gpu]!", "gpus: [Gpu!]!", "field Pod.gpus is [Gpu!]! here, [Gpu]! there"),
    ("gpus: [Gpu]!", "gpus: Gpu", "field Pod.gpus is Gpu here, [Gpu]! there"),
    ("status: Status", "status: Status cost: Float", "field Pod.cost does not exist there"),
    ("RUNNING EXITED", "RUNNING EXITED LOST", "enum Status has no value LOST there"),
    (
        "pod(input: PodFilter)",
        "pod(input: PodFilter!)",
        "argument Query.pod(input) is PodFilter! here, PodFilter there",
    ),
    (
        "pod(input: PodFilter)",
        "pod(input: PodFilter, at: Int)",
        "argument Query.pod(at) does not exist there",
    ),
    (
        "podId: String!",
        "podId: String",
        "field input PodFilter(podId) is String here, String! there",
    ),
    (
        "podId: String! }",
        "podId: String! zone: String }",
        "field input PodFilter(zone) does not exist there",
    ),
    (
        "podId: String! }",
        "other: String }",
        "field input PodFilter(podId) is required there and missing here",
    ),
    (
        "type Gpu { id: String }",
        "input Gpu { id: String }",
        "type Gpu is a GraphQLInputObjectType here, GraphQLObjectType there",
    ),
    (
        "type Gpu { id: String }",
        "type Gpu { id: String } type Disk { size: Int }",
        "type Disk does not exist there",
    ),
]


def test_the_subset_check_names_each_difference():
    theirs = graphql.build_schema(SMALL)
    assert subset_problems(theirs, theirs) == []
    # Leaving out what is optional there is what a part of a schema does.
    part = SMALL.replace(" status: Status", "").replace("enum Status { RUNNING EXITED }", "")
    assert subset_problems(graphql.build_schema(part), theirs) == []
    for old, new, problem in CHANGES:
        assert old in SMALL, old
        ours = graphql.build_schema(SMALL.replace(old, new))
        assert problem in subset_problems(ours, theirs), (old, new)


# -- with the fuller transcription of RunPod's schema (../shared in CI) -------------


@pytest.fixture
def transcription() -> graphql.GraphQLSchema:
    return graphql.build_schema(shared_file(TRANSCRIPTION).read_text())


def test_the_projects_schema_is_a_faithful_part_of_runpods(transcription):
    ours = load_schema()
    assert subset_problems(ours, transcription) == []
    # and the comparison saw the whole of it
    assert set(ours.type_map) - {"String", "Int", "Float", "Boolean"} <= set(transcription.type_map)


def test_every_operation_validates_against_runpods_schema(transcription):
    for name, query in project_operations().items():
        assert graphql.validate(transcription, graphql.parse(query)) == [], name


async def test_the_stand_in_runs_on_runpods_schema_too(transcription):
    """The stand-in's resolvers need nothing beyond RunPod's own declarations."""
    fake = RunPodFake(schema_path=shared_file(TRANSCRIPTION), start_delay_s=0.1)
    await fake.start()
    try:
        async with client_for(fake) as client:
            offers = await client.offers(gpu="4090")
            assert [o.cloud_type for o in offers] == ["COMMUNITY", "SECURE"]
            pod = await client.create_pod(
                PodRequest(name="t", image_name="img", gpu_type_id=offers[0].gpu_type_id)
            )
            pod = await client.wait_for_pod(pod.id, timeout_s=10, interval_s=0.1)
            assert pod.is_running
            assert await client.terminate_pod(pod.id) is True
        assert fake.invalid_requests() == []
    finally:
        await fake.stop()
