import copy
import json
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, insert, text
from sqlalchemy.exc import IntegrityError

from hub_service.catalog import (
    DEFAULT_IMAGES,
    MAX_DESCRIPTION,
    MAX_DISPLAY_NAME,
    MAX_IMAGE_REFERENCE,
    MAX_IMAGES,
    MAX_TAG,
    MAX_TAGS,
    MEMORY_PATTERN,
    MEMORY_UNITS,
    Catalog,
    CatalogError,
    CatalogFull,
    _ImageRow,
    is_valid_image_reference,
    validate_entry,
)
from hub_service.handlers import MAX_ENTRY_BODY_BYTES
from tests.postgres import postgres_server
from thinkube_core.quantity import parse_quantity

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["file", "memory", "postgresql"])
def catalog(request, tmp_path):
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres")
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
    else:
        url = f"sqlite:///{tmp_path / 'catalog.sqlite'}" if request.param == "file" else "sqlite://"
    catalog = Catalog(url)
    yield catalog
    catalog.close()


def image(image="quay.io/jupyter/base-notebook:2025-01-06", **fields):
    return {"image": image, **fields}


# --- image references ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "reference",
    [
        "ubuntu",
        "ubuntu:24.04",
        "quay.io/jupyter/base-notebook:2025-01-06",
        "localhost:5000/a/b:c",
        f"registry.example.com/ns/img@{DIGEST}",
        f"img:tag@{DIGEST}",
        "docker.io/library/ubuntu:latest",
        "Registry.Example.com/img",  # host names are case-insensitive
        "[::1]:5000/img",
        "a__b/c--d/e.f_g-h",
        "img:_Tag.With-Mixed_case",
        "img:" + "t" * 128,
        "img@sha512:" + "ab" * 64,
        "a" * 255,
        "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
    ],
)
def test_valid_image_references(reference):
    assert is_valid_image_reference(reference)
    assert validate_entry("x", image(reference))["image"] == reference


@pytest.mark.parametrize(
    "reference",
    [
        "",
        "Ubuntu",
        "ns/Ubuntu",
        "ubuntu:",
        "ubuntu: 1",
        " ubuntu",
        "ubuntu ",
        "-bad",
        "bad-",
        "a//b",
        "ubuntu/",
        "/ubuntu",
        "img@sha256:short",
        "img@sha256:" + "0123456789ABCDEF" * 4,
        "img@md5:0123456789abcdef0123456789abcdef",
        ":tag",
        "@" + DIGEST,
        "ubuntu:latest:x",
        "ubuntu:-tag",
        "img:" + "t" * 129,
        "host:port/img",
        "a" * 256,
        "0123456789abcdef" * 4,  # a bare image id, refused as a repository name
        "a...b",
        "a___b",
    ],
)
def test_invalid_image_references(reference):
    assert not is_valid_image_reference(reference)
    with pytest.raises(CatalogError) as raised:
        validate_entry("x", image(reference))
    assert raised.value.field == "image"


@pytest.mark.parametrize("value", [None, 3, b"ubuntu", ["ubuntu"]])
def test_image_reference_must_be_a_string(value):
    assert not is_valid_image_reference(value)


# --- validation ---------------------------------------------------------------------------


def test_defaults_are_filled_in():
    assert validate_entry("minimal", {"image": "ubuntu"}) == {
        "name": "minimal",
        "display_name": "minimal",
        "description": "",
        "default": False,
        "image": "ubuntu",
        "tags": [],
        "kind": "jupyter",
        "pull_policy": "IfNotPresent",
        "metadata": {
            "gpu_required": False,
            "cpu_limit": None,
            "mem_limit": None,
            "cloud_image": None,
        },
    }


def test_full_entry_is_kept_and_copied():
    body = {
        "name": "torch",
        "display_name": "  PyTorch  ",
        "description": "GPU notebook",
        "default": True,
        "image": f"quay.io/jupyter/pytorch-notebook@{DIGEST}",
        "tags": ["gpu", " pytorch ", "gpu"],
        "kind": "vscode",
        "pull_policy": "Always",
        "metadata": {
            "gpu_required": True,
            "cpu_limit": 0.5,
            "mem_limit": "1536Mi",
            "cloud_image": "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
        },
    }
    original = copy.deepcopy(body)
    entry = validate_entry("torch", body)
    assert entry["display_name"] == "PyTorch"
    assert entry["tags"] == ["gpu", "pytorch"]
    assert entry["metadata"] == original["metadata"]
    assert {key: entry[key] for key in ("default", "kind", "pull_policy", "image")} == {
        "default": True,
        "kind": "vscode",
        "pull_policy": "Always",
        "image": body["image"],
    }
    entry["metadata"]["cpu_limit"] = 99
    entry["tags"].append("x")
    assert body == original


@pytest.mark.parametrize("cpu_limit", [1, 0.25, 64, 0.001, 4096, 4096.0, None])
@pytest.mark.parametrize(
    "mem_limit", ["16Gi", "500M", "1536Mi", "2048", "1", "1Pi", "1125899906842624", "1125T", None]
)
def test_accepted_limits(cpu_limit, mem_limit):
    entry = validate_entry("x", image(metadata={"cpu_limit": cpu_limit, "mem_limit": mem_limit}))
    assert (entry["metadata"]["cpu_limit"], entry["metadata"]["mem_limit"]) == (
        cpu_limit,
        mem_limit,
    )


@pytest.mark.parametrize("pull_policy", ["IfNotPresent", "Always", "Never"])
def test_accepted_pull_policies(pull_policy):
    assert validate_entry("x", image(pull_policy=pull_policy))["pull_policy"] == pull_policy


@pytest.mark.parametrize("name", ["a", "0", "a-b", "scipy-2025", "a" * 63])
def test_accepted_names(name):
    assert validate_entry(name, image(name=name))["name"] == name


INVALID = [
    # (name in the URL, body, field the error names)
    ("Bad", image(), "name"),
    ("", image(), "name"),
    ("a" * 64, image(), "name"),
    ("-a", image(), "name"),
    ("a-", image(), "name"),
    ("a_b", image(), "name"),
    ("a.b", image(), "name"),
    (None, image(), "name"),
    ("ok", image(name="other"), "name"),
    ("ok", image(name=None), "name"),
    ("ok", None, None),
    ("ok", ["ubuntu"], None),
    ("ok", "ubuntu", None),
    ("ok", {}, "image"),
    ("ok", image(None), "image"),
    ("ok", image(5), "image"),
    ("ok", image("Ubuntu"), "image"),
    ("ok", image(extra=1), "extra"),
    ("ok", image(Image="ubuntu"), "Image"),
    ("ok", image(display_name=5), "display_name"),
    ("ok", image(display_name=None), "display_name"),
    ("ok", image(display_name="   "), "display_name"),
    ("ok", image(display_name="\u3000\u00a0"), "display_name"),
    ("ok", image(display_name="a" * 129), "display_name"),
    ("ok", image(display_name="two\nlines"), "display_name"),
    ("ok", image(display_name="bell\x07"), "display_name"),
    ("ok", image(display_name="\ud800"), "display_name"),
    ("ok", image(description="x" * 2001), "description"),
    ("ok", image(description="nul\x00"), "description"),
    ("ok", image(description="c1\x85"), "description"),
    ("ok", image(description="lone \udfff"), "description"),
    ("ok", image(tags=["t"] * 33), "tags"),
    ("ok", image(tags=["ok", "t" * 65]), "tags.1"),
    ("ok", image(tags=["tab\tinside"]), "tags.0"),
    ("ok", image(tags=["\ud83d"]), "tags.0"),
    ("ok", image("a" * 256), "image"),
    ("ok", image(kind="k" * 64), "kind"),
    ("ok", image(pull_policy="x" * 10_000), "pull_policy"),
    ("ok", image(description=None), "description"),
    ("ok", image(default=1), "default"),
    ("ok", image(default="true"), "default"),
    ("ok", image(default=None), "default"),
    ("ok", image(tags="gpu"), "tags"),
    ("ok", image(tags=["gpu", 1]), "tags.1"),
    ("ok", image(tags=["gpu", " "]), "tags.1"),
    ("ok", image(kind="Jupyter"), "kind"),
    ("ok", image(kind=3), "kind"),
    ("ok", image(kind=""), "kind"),
    ("ok", image(pull_policy="always"), "pull_policy"),
    ("ok", image(pull_policy=None), "pull_policy"),
    ("ok", image(metadata=[]), "metadata"),
    ("ok", image(metadata=None), "metadata"),
    ("ok", image(metadata={"gpu": True}), "metadata.gpu"),
    ("ok", image(metadata={"gpu_required": 1}), "metadata.gpu_required"),
    ("ok", image(metadata={"gpu_required": "yes"}), "metadata.gpu_required"),
    ("ok", image(metadata={"cpu_limit": True}), "metadata.cpu_limit"),
    ("ok", image(metadata={"cpu_limit": "2"}), "metadata.cpu_limit"),
    ("ok", image(metadata={"cpu_limit": 0}), "metadata.cpu_limit"),
    ("ok", image(metadata={"cpu_limit": -1}), "metadata.cpu_limit"),
    ("ok", image(metadata={"cpu_limit": float("nan")}), "metadata.cpu_limit"),
    ("ok", image(metadata={"cpu_limit": float("inf")}), "metadata.cpu_limit"),
    ("ok", image(metadata={"cpu_limit": 0.0009}), "metadata.cpu_limit"),
    ("ok", image(metadata={"cpu_limit": 4096.5}), "metadata.cpu_limit"),
    ("ok", image(metadata={"cpu_limit": 4097}), "metadata.cpu_limit"),
    ("ok", image(metadata={"cpu_limit": 1e308}), "metadata.cpu_limit"),
    ("ok", image(metadata={"cpu_limit": 1e-300}), "metadata.cpu_limit"),
    ("ok", image(metadata={"cpu_limit": 10**5000}), "metadata.cpu_limit"),
    ("ok", image(metadata={"mem_limit": "16GB"}), "metadata.mem_limit"),
    ("ok", image(metadata={"mem_limit": "1e100"}), "metadata.mem_limit"),
    ("ok", image(metadata={"mem_limit": "1e9"}), "metadata.mem_limit"),
    ("ok", image(metadata={"mem_limit": "1.5Gi"}), "metadata.mem_limit"),
    ("ok", image(metadata={"mem_limit": "+8Gi"}), "metadata.mem_limit"),
    ("ok", image(metadata={"mem_limit": "016Gi"}), "metadata.mem_limit"),
    ("ok", image(metadata={"mem_limit": "2Pi"}), "metadata.mem_limit"),
    ("ok", image(metadata={"mem_limit": "1025Ti"}), "metadata.mem_limit"),
    ("ok", image(metadata={"mem_limit": "1125899906842625"}), "metadata.mem_limit"),
    ("ok", image(metadata={"mem_limit": "\uff14Gi"}), "metadata.mem_limit"),  # a full-width 4
    ("ok", image(metadata={"mem_limit": "1" * 19}), "metadata.mem_limit"),
    ("ok", image(metadata={"mem_limit": "16 Gi"}), "metadata.mem_limit"),
    ("ok", image(metadata={"mem_limit": ""}), "metadata.mem_limit"),
    ("ok", image(metadata={"mem_limit": "0"}), "metadata.mem_limit"),
    ("ok", image(metadata={"mem_limit": "-1Gi"}), "metadata.mem_limit"),
    ("ok", image(metadata={"mem_limit": 1024}), "metadata.mem_limit"),
    ("ok", image(metadata={"mem_limit": True}), "metadata.mem_limit"),
    ("ok", image(metadata={"cloud_image": "Bad Image"}), "metadata.cloud_image"),
    ("ok", image(metadata={"cloud_image": 3}), "metadata.cloud_image"),
]


@pytest.mark.parametrize(("name", "body", "field"), INVALID)
def test_validation_errors_name_the_field(name, body, field):
    with pytest.raises(CatalogError) as raised:
        validate_entry(name, body)
    assert raised.value.field == field
    assert raised.value.message
    assert str(raised.value) == (
        f"{field}: {raised.value.message}" if field else raised.value.message
    )
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize(("name", "body", "field"), INVALID)
def test_rejected_put_stores_nothing(catalog, name, body, field):
    catalog.put("keep", image(display_name="Kept", default=True))
    before = catalog.list()
    with pytest.raises(CatalogError) as raised:
        catalog.put(name, body)
    assert raised.value.field == field
    assert catalog.list() == before


def test_rejected_replacement_keeps_the_old_entry(catalog):
    stored, _ = catalog.put("a", image(default=True, tags=["x"]))
    with pytest.raises(CatalogError):
        catalog.put("a", image(default=True, metadata={"cpu_limit": -1}))
    assert catalog.get("a") == stored


def test_error_messages_are_plain():
    with pytest.raises(CatalogError) as raised:
        validate_entry("ok", image(metadata={"cpu_limit": 0}))
    assert str(raised.value) == (
        "metadata.cpu_limit: must be a number of cores from 0.001 to 4096, not 0"
    )
    with pytest.raises(CatalogError) as raised:
        validate_entry("ok", {"name": "other", "image": "ubuntu"})
    assert str(raised.value) == "name: 'other' does not match the name in the URL ('ok')"
    with pytest.raises(CatalogError) as raised:
        validate_entry("ok", [])
    assert str(raised.value) == "the entry must be a JSON object, not list"
    with pytest.raises(CatalogError) as raised:
        validate_entry("ok", image(metadata={"mem_limit": "16GB"}))
    assert raised.value.message.startswith("'16GB' is not a Kubernetes quantity")
    with pytest.raises(CatalogError) as raised:
        validate_entry("ok", image(metadata={"mem_limit": "1.5Gi"}))
    assert raised.value.message == (
        "'1.5Gi' must be a whole number of bytes or of one unit "
        "(k, M, G, T, P, Ki, Mi, Gi, Ti, Pi), like '1536Mi'"
    )
    # a refused value is quoted back cut short, not whole
    with pytest.raises(CatalogError) as raised:
        validate_entry("ok", image("Q" * 200))
    assert str(raised.value) == (
        "image: " + repr("Q" * 80) + "... is not a valid image reference "
        "([registry[:port]/]lowercase/path[:tag][@sha256:<64 hex digits>])"
    )
    with pytest.raises(CatalogError) as raised:
        validate_entry("ok", image(pull_policy="x" * 10_000))
    assert len(str(raised.value)) < 200
    with pytest.raises(CatalogError) as raised:
        validate_entry("ok", image(metadata={"cpu_limit": 10**5000}))
    assert len(str(raised.value)) < 200


# --- storage --------------------------------------------------------------------------------


def test_crud(catalog):
    assert catalog.list() == []
    assert catalog.get("scipy") is None

    entry, created = catalog.put("scipy", image(display_name="SciPy", tags=["cpu"]))
    assert created is True
    assert entry == validate_entry("scipy", image(display_name="SciPy", tags=["cpu"]))
    assert catalog.get("scipy") == entry
    assert catalog.list() == [entry]

    # PUT replaces the whole entry: fields left out go back to their defaults.
    replaced, created = catalog.put("scipy", {"image": "ubuntu:24.04", "description": "new"})
    assert created is False
    assert replaced["display_name"] == "scipy" and replaced["tags"] == []
    assert catalog.get("scipy") == replaced

    assert catalog.delete("scipy") is True
    assert catalog.delete("scipy") is False
    assert catalog.get("scipy") is None
    assert catalog.list() == []


def test_returned_entries_are_copies(catalog):
    body = image(tags=["a"], metadata={"cpu_limit": 2})
    entry, _ = catalog.put("x", body)
    body["tags"].append("b")
    entry["tags"].append("c")
    entry["metadata"]["cpu_limit"] = 8
    catalog.get("x")["metadata"]["cpu_limit"] = 16
    catalog.list()[0]["tags"].clear()
    assert catalog.get("x")["tags"] == ["a"]
    assert catalog.get("x")["metadata"]["cpu_limit"] == 2


def test_list_puts_defaults_first_then_sorts_by_display_name(catalog):
    catalog.put("zeta", image(display_name="zeta"))
    catalog.put("alpha", image(display_name="Alpha"))
    catalog.put("mid", image(display_name="Mid", default=True))
    catalog.put("beta", image(display_name="beta"))
    catalog.put("code", image(display_name="Code", kind="vscode", default=True))
    catalog.put("aaa-code", image(display_name="A code", kind="vscode"))

    assert [entry["name"] for entry in catalog.list()] == [
        "code",
        "mid",
        "aaa-code",
        "alpha",
        "beta",
        "zeta",
    ]
    assert [entry["name"] for entry in catalog.list("jupyter")] == ["mid", "alpha", "beta", "zeta"]
    assert [entry["name"] for entry in catalog.list("vscode")] == ["code", "aaa-code"]
    assert catalog.list("rstudio") == []


def test_one_default_per_kind(catalog):
    catalog.put("a", image(default=True))
    catalog.put("code", image(kind="vscode", default=True))
    catalog.put("b", image())
    assert catalog.get("a")["default"] is True  # a non-default write leaves the default alone

    entry, _ = catalog.put("b", image(default=True))
    assert entry["default"] is True
    assert catalog.get("a")["default"] is False
    assert catalog.get("code")["default"] is True  # another kind keeps its own default

    catalog.put("b", image(default=True))  # idempotent
    assert [entry["name"] for entry in catalog.list() if entry["default"]] == ["b", "code"]

    catalog.put("code", image(kind="jupyter", default=True))  # moves kind, takes the default
    assert [entry["name"] for entry in catalog.list() if entry["default"]] == ["code"]


def test_database_refuses_a_second_default_of_a_kind(catalog):
    catalog.put("a", image(default=True))
    row = {"kind": "jupyter", "is_default": True, "spec": {}}
    with pytest.raises(IntegrityError), catalog.engine.begin() as connection:
        connection.execute(insert(_ImageRow).values(name="b", **row))
    with catalog.engine.begin() as connection:  # a default of another kind is fine
        connection.execute(insert(_ImageRow).values(name="c", **{**row, "kind": "vscode"}))


def test_concurrent_writes_keep_one_default(catalog):
    def write(number):
        catalog.put(f"image-{number % 8}", image(display_name=f"Image {number}", default=True))
        return catalog.get(f"image-{number % 8}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(write, range(64)))
    assert all(result is not None for result in results)
    entries = catalog.list()
    assert len(entries) == 8
    assert sum(entry["default"] for entry in entries) == 1
    assert entries[0]["default"] is True


def test_instances_sharing_a_file_race_safely(tmp_path):
    # Separate instances do not share a lock: like separate processes, they race in SQLite.
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    catalogs = [Catalog(url) for _ in range(4)]

    def write(number):
        catalogs[number % 4].put(f"image-{number % 5}", image(default=number % 3 == 0))

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(write, range(200)))
    entries = catalogs[0].list()
    assert len(entries) == 5
    assert sum(entry["default"] for entry in entries) <= 1
    for catalog in catalogs:
        catalog.close()


def test_memory_catalog_is_shared_between_threads():
    catalog = Catalog("sqlite://")
    catalog.put("a", image())
    seen = []
    thread = threading.Thread(target=lambda: seen.append(catalog.get("a")))
    thread.start()
    thread.join()
    assert seen == [catalog.get("a")]
    catalog.close()


def test_persists_across_instances(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    first = Catalog(url)
    first.seed(DEFAULT_IMAGES)
    first.put("custom", image(display_name="Custom", kind="vscode", default=True))
    first.delete("minimal")
    expected = first.list()
    first.close()

    second = Catalog(url)
    assert second.list() == expected
    assert second.seed(DEFAULT_IMAGES) is False  # not empty: the edits stay
    assert second.get("minimal") is None
    second.close()


# --- seeding --------------------------------------------------------------------------------


def test_default_images_are_valid_and_seed(catalog):
    assert catalog.seed(DEFAULT_IMAGES) is True
    entries = catalog.list("jupyter")
    assert len(entries) == len(DEFAULT_IMAGES)
    assert entries[0]["name"] == "scipy"
    assert [entry["name"] for entry in entries if entry["default"]] == ["scipy"]
    gpu = catalog.get("pytorch-cuda")
    assert gpu["metadata"]["gpu_required"] is True
    assert is_valid_image_reference(gpu["metadata"]["cloud_image"])
    assert all(not entry["metadata"]["gpu_required"] for entry in entries if entry["default"])


def test_seed_only_when_empty(catalog):
    assert catalog.seed([{"name": "one", "image": "ubuntu"}]) is True
    assert catalog.seed([{"name": "two", "image": "ubuntu"}]) is False
    assert [entry["name"] for entry in catalog.list()] == ["one"]

    catalog.delete("one")
    assert catalog.seed([{"name": "two", "image": "ubuntu"}]) is True
    assert [entry["name"] for entry in catalog.list()] == ["two"]


def test_seed_does_not_modify_its_input(catalog):
    seed = copy.deepcopy(list(DEFAULT_IMAGES))
    catalog.seed(seed)
    catalog.put("scipy", image())
    assert seed == list(DEFAULT_IMAGES)


@pytest.mark.parametrize(
    ("entries", "field", "entry"),
    [
        (
            [{"name": "ok", "image": "ubuntu"}, {"name": "bad", "image": "Ubuntu"}],
            "image",
            "#1 ('bad')",
        ),
        ([{"image": "ubuntu"}], "name", "#0"),
        ([{"name": 7, "image": "ubuntu"}], "name", "#0"),
        ([{"name": "Bad", "image": "ubuntu"}], "name", "#0 ('Bad')"),
        (["ubuntu"], None, "#0"),
        ([{"name": "a", "image": "ubuntu"}, {"name": "a", "image": "ubuntu"}], "name", "#1 ('a')"),
        (
            [
                {"name": "a", "image": "ubuntu", "default": True},
                {"name": "b", "image": "ubuntu", "default": True},
            ],
            "default",
            "#1 ('b')",
        ),
        (
            [{"name": "a", "image": "ubuntu", "metadata": {"mem_limit": "lots"}}],
            "metadata.mem_limit",
            "#0 ('a')",
        ),
    ],
)
def test_bad_seed_entry_is_named_and_nothing_is_stored(catalog, entries, field, entry):
    with pytest.raises(CatalogError) as raised:
        catalog.seed(entries)
    assert (raised.value.field, raised.value.entry) == (field, entry)
    assert str(raised.value).startswith(f"seed entry {entry}: ")
    assert catalog.list() == []


def test_bad_seed_is_reported_even_when_not_empty(catalog):
    catalog.seed(DEFAULT_IMAGES)
    with pytest.raises(CatalogError):
        catalog.seed([{"name": "bad", "image": "Bad"}])
    assert len(catalog.list()) == len(DEFAULT_IMAGES)


def test_defaults_of_different_kinds_seed_together(catalog):
    catalog.seed(
        [
            {"name": "a", "image": "ubuntu", "default": True},
            {"name": "b", "image": "ubuntu", "default": True, "kind": "vscode"},
        ]
    )
    assert [entry["name"] for entry in catalog.list() if entry["default"]] == ["a", "b"]


# --- bounds ---------------------------------------------------------------------------------


def test_the_memory_pattern_is_exactly_one_byte_to_one_pebibyte():
    """MEMORY_PATTERN carries the bound itself (the OpenAPI document gives it): for every unit,
    each whole count is admitted exactly when 1 <= count * unit <= 1Pi."""
    from random import Random

    pattern = re.compile(MEMORY_PATTERN)
    draw = Random(7)
    for unit, size in MEMORY_UNITS.items():
        largest = 2**50 // size
        counts = {1, 2, 9, 10, 11, largest - 1, largest, largest + 1, largest * 10 + 9}
        counts |= {draw.randint(1, largest * 2) for _ in range(200)}
        counts |= {int("9" * digits) for digits in range(1, len(str(largest)) + 2)}
        for count in counts:
            text = f"{count}{unit}"
            expected = 1 <= count * size <= 2**50
            assert bool(pattern.fullmatch(text)) is expected, text
            if expected:
                assert validate_entry("x", image(metadata={"mem_limit": text}))
                assert parse_quantity(text) == count * size
    for text in ("0", "0Gi", "00", "01", "1.0", "1e3", "1E", "1K", "1ki", "Gi", " 1", "1 "):
        assert not pattern.fullmatch(text), text


def test_the_largest_entry_fits_in_a_request_body():
    """Every field at its longest, every character sent as a 12-byte surrogate-pair escape,
    is still within the body a PUT may send."""
    astral = "\U0001f600"
    longest = {
        "display_name": astral * MAX_DISPLAY_NAME,
        "description": astral * MAX_DESCRIPTION,
        "default": False,
        "image": "a" * MAX_IMAGE_REFERENCE,
        "tags": [f"{index:02d}" + astral * (MAX_TAG - 2) for index in range(MAX_TAGS)],
        "kind": "k" * 63,
        "pull_policy": "IfNotPresent",
        "metadata": {
            "gpu_required": True,
            "cpu_limit": 4095.999,
            "mem_limit": "1125899906842624",
            "cloud_image": "b" * MAX_IMAGE_REFERENCE,
        },
    }
    assert validate_entry("n" * 63, longest)
    assert len(json.dumps(longest).encode()) <= MAX_ENTRY_BODY_BYTES


def test_the_catalog_keeps_at_most_max_images(catalog):
    for number in range(MAX_IMAGES):
        catalog.put(f"image-{number}", image())
    with pytest.raises(CatalogFull) as raised:
        catalog.put("one-more", image())
    assert raised.value.field is None
    assert str(raised.value).startswith(f"the catalog holds {MAX_IMAGES} images")
    assert catalog.get("one-more") is None
    # replacing one is no new entry
    replaced, created = catalog.put("image-0", image(display_name="Replaced"))
    assert (replaced["display_name"], created) == ("Replaced", False)
    catalog.delete("image-1")
    assert catalog.put("one-more", image())[1] is True


# --- rows an older version wrote -------------------------------------------------------------


def store_raw(catalog: Catalog, name: str, spec_json: str, kind: str = "jupyter") -> None:
    """A row as an older version (or a hand) wrote it: the spec column's text as it is."""
    with catalog.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO images (name, kind, is_default, spec, created_at, updated_at) "
            "VALUES (?, ?, 0, ?, '2024-01-01 00:00:00', '2024-01-01 00:00:00')",
            (name, kind, spec_json),
        )


def old_spec(**fields) -> str:
    spec = {
        "display_name": "Old",
        "description": "",
        "image": "ubuntu:24.04",
        "tags": [],
        "pull_policy": "IfNotPresent",
        "metadata": {"gpu_required": False, "cpu_limit": None, "mem_limit": None},
    }
    spec.update(fields)
    return json.dumps(spec)  # ensure_ascii: a lone surrogate is stored as "\ud800"


def test_stored_text_that_breaks_the_rules_is_served_repaired(catalog, caplog):
    if catalog.engine.url.get_backend_name() != "sqlite":
        pytest.skip("plants rows as an older version wrote them, in SQLite's SQL")
    store_raw(catalog, "surrogate", old_spec(description="bad \ud800 text", display_name="\udc00"))
    store_raw(catalog, "huge", old_spec(description="x" * 10_000_000, tags=["t"] * 100))
    store_raw(
        catalog,
        "controls",
        old_spec(display_name="two\nlines\x00", tags=["ok", 3, "", "a\x07b", "z" * 100]),
    )
    store_raw(catalog, "old-memory", old_spec(metadata={"mem_limit": "1.5Gi", "cpu_limit": 2}))
    with caplog.at_level(logging.WARNING, logger="thinkube.catalog"):
        entries = {entry["name"]: entry for entry in catalog.list()}
        catalog.list()  # each row is reported once, not on every read
    assert entries["surrogate"]["description"] == "bad \ufffd text"
    assert entries["surrogate"]["display_name"] == "\ufffd"
    assert len(entries["huge"]["description"]) == MAX_DESCRIPTION
    assert entries["huge"]["description"].endswith("\u2026")
    assert entries["huge"]["tags"] == ["t"]  # the first 32, repeats dropped
    assert entries["controls"]["display_name"] == "twolines"
    assert entries["controls"]["tags"] == ["ok", "ab", "z" * (MAX_TAG - 1) + "\u2026"]
    assert entries["old-memory"]["metadata"]["mem_limit"] == "1536Mi"
    for entry in entries.values():
        assert validate_entry(entry["name"], entry) == entry  # as the API would take them
        json.dumps(entry, ensure_ascii=False).encode()  # valid UTF-8 throughout
    assert catalog.get("huge") == entries["huge"]
    reports = [record.getMessage() for record in caplog.records]
    assert len(reports) == 4
    assert all("served repaired" in report for report in reports)


def test_stored_entries_whose_values_break_the_rules_are_withheld(catalog, caplog):
    if catalog.engine.url.get_backend_name() != "sqlite":
        pytest.skip("plants rows as an older version wrote them, in SQLite's SQL")
    catalog.put("good", image())
    store_raw(catalog, "nan-cpu", old_spec(metadata={"cpu_limit": float("nan")}))
    store_raw(catalog, "huge-cpu", old_spec(metadata={"cpu_limit": 1e308}))
    store_raw(catalog, "huge-memory", old_spec(metadata={"mem_limit": "1e100"}))
    store_raw(catalog, "bad-image", old_spec(image="Not An Image"))
    store_raw(catalog, "no-image", json.dumps({"display_name": "x"}))
    store_raw(catalog, "not-json", "{not json")
    store_raw(catalog, "too-deep", "[" * 100_000 + "]" * 100_000)
    store_raw(catalog, "a list", "[1, 2]")
    store_raw(catalog, "Bad_Name", old_spec())
    store_raw(catalog, "bad-kind", old_spec(), kind="Not A Kind")
    with caplog.at_level(logging.WARNING, logger="thinkube.catalog"):
        assert [entry["name"] for entry in catalog.list()] == ["good"]
        assert catalog.list("jupyter") == [catalog.get("good")]
    for name in ("nan-cpu", "huge-cpu", "huge-memory", "not-json", "too-deep", "Bad_Name"):
        assert catalog.get(name) is None
    withheld = [record.getMessage() for record in caplog.records]
    assert len(withheld) == 10
    assert any("stored image 'nan-cpu' is withheld: metadata.cpu_limit:" in m for m in withheld)
    # replaced or deleted like any other
    assert catalog.put("nan-cpu", image())[1] is False
    assert catalog.get("nan-cpu") is not None
    assert catalog.delete("not-json")
