import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from hub_service.catalog import (
    DEFAULT_IMAGES,
    Catalog,
    CatalogError,
    _ImageRow,
    is_valid_image_reference,
    validate_entry,
)

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.fixture(params=["file", "memory"])
def catalog(request, tmp_path):
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
            "mem_limit": "1.5Gi",
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


@pytest.mark.parametrize("cpu_limit", [1, 0.25, 64, None])
@pytest.mark.parametrize("mem_limit", ["16Gi", "500M", "1e9", "1.5Gi", "2048", None])
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
    ("ok", image(metadata={"mem_limit": "16GB"}), "metadata.mem_limit"),
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
    assert str(raised.value) == "metadata.cpu_limit: must be a positive number, not 0"
    with pytest.raises(CatalogError) as raised:
        validate_entry("ok", {"name": "other", "image": "ubuntu"})
    assert str(raised.value) == "name: 'other' does not match the name in the URL ('ok')"
    with pytest.raises(CatalogError) as raised:
        validate_entry("ok", [])
    assert str(raised.value) == "the entry must be a JSON object, not list"
    with pytest.raises(CatalogError) as raised:
        validate_entry("ok", image(metadata={"mem_limit": "16GB"}))
    assert raised.value.message.startswith("'16GB' is not a Kubernetes quantity")


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
