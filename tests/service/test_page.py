"""The service's page, rendered without servers: from real node and summary documents
(hub_service.nodes over kubesim's generated nodes, hub_service.local for one machine) to
HTML. Escaping of hostile text, lone surrogates, bars, ages, an empty cluster, stale data,
5,000 nodes, the query, cloud offers and the inline script's Content-Security-Policy."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import random
import re
from pathlib import Path

import pytest

from hub_service.local import machine_document
from hub_service.nodes import node_document, summary_document
from hub_service.page import (
    CONTENT_SECURITY_POLICY,
    GPU_FILTERS,
    PageQuery,
    PageQueryError,
    bar,
    bytes_pair_text,
    duration_text,
    gpu_server_view,
    page_view,
    parse_query,
    render_page,
    select_nodes,
)
from tests.kubesim.generator import GPU_MODELS, generate_nodes, make_node
from thinkube_core.accounting import summarize_pod

GIB = 1024**3
NOW = 1_760_000_000.0  # a fixed clock: 2025-10-09T08:53:20Z
GENERATED = "2025-10-09T08:52:00.000Z"  # 80 s before NOW
FRESH = {"generated_at": GENERATED, "resource_version": "42", "stale": False, "age_seconds": 0.0}
RECORDS = json.loads(
    (Path(__file__).parents[1] / "local" / "data" / "nvml_records.json").read_text()
)
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>&amp;'


def cluster(nodes: int = 20, gpu_nodes: int = 6, seed: int = 1) -> list[dict]:
    return [
        node_document(node, []) for node in generate_nodes(nodes, gpu_nodes, random.Random(seed))
    ]


def pod(name: str, node: str, cpu: str, memory: str, gpus: int = 0) -> dict:
    resources = {"cpu": cpu, "memory": memory}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    return {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "main", "resources": {"requests": resources}}],
        },
        "status": {"phase": "Running"},
    }


def render(nodes, summary=None, **overrides) -> str:
    arguments = {
        "nodes": nodes,
        "summary": summary if summary is not None else summary_document(nodes),
        "freshness": FRESH,
        "not_ready_reason": None,
        "cloud": None,
        "query": PageQuery(),
        "rows_per_page": 50,
        "prefix": "/services/thinkube-resources/",
        "hub_home": "/hub/home",
        "refresh_seconds": 10,
        "now": NOW,
    }
    arguments.update(overrides)
    body = render_page(page_view(**arguments))
    return body.decode("utf-8")  # strict: the page is valid UTF-8


def row_names(page: str) -> list[str]:
    return re.findall(r'<div class="name">([^<]*)</div>', page)


# --- pieces -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (0.9, "0 s"),
        (59.9, "59 s"),
        (60, "1 min"),
        (200, "3 min 20 s"),
        (600, "10 min"),
        (659, "10 min"),
        (7500, "2 h 5 min"),
        (7200, "2 h"),
        (4 * 86400 + 3 * 3600 + 59, "4 d 3 h"),
        (-5, "0 s"),
        (float("nan"), "0 s"),
    ],
)
def test_durations_read_as_people_say_them(seconds, text):
    assert duration_text(seconds) == text


def test_bars_show_the_free_share_and_how_tight_it_is():
    half = bar(32, 64, "32 of 64")
    assert (half.percent, half.level, half.text) == (50.0, "roomy", "32 of 64")
    assert (bar(12.5, 64, "").percent, bar(12.5, 64, "").level) == (19.5, "tight")
    assert (bar(0, 8, "").percent, bar(0, 8, "").level) == (0.0, "full")
    # nothing allocatable: no bar to fill, whatever is free
    assert (bar(3, 0, "").percent, bar(3, 0, "").level) == (0.0, "none")
    # requests above allocatable never make it negative; more free than allocatable is full
    assert bar(-1, 8, "").percent == 0.0
    assert bar(80, 64, "").percent == 100.0
    assert bar(float("nan"), 8, "").level == "full"


def test_memory_reads_in_the_unit_of_the_whole():
    assert bytes_pair_text(7.5 * GIB, 126 * GIB) == "7.5 of 126 GiB"
    assert bytes_pair_text(126 * GIB, 126 * GIB) == "126 of 126 GiB"
    assert bytes_pair_text(512 * 1024**2, 2 * GIB) == "0.5 of 2 GiB"
    assert bytes_pair_text(300 * 1024**2, 900 * 1024**2) == "300 of 900 MiB"
    assert bytes_pair_text(1.5 * 1024 * GIB, 3.5 * 1024 * GIB) == "1.5 of 3.5 TiB"


# --- the page ---------------------------------------------------------------------------------


def test_each_node_is_a_row_with_cpu_memory_and_gpu_bars():
    a100 = GPU_MODELS[0]  # 4 GPUs, 64 CPUs, 512 GiB
    node = make_node("gpu-a", a100.cpu, a100.memory_gi, a100, 1)
    pods = [summarize_pod(pod("p1", "gpu-a", "16", "128Gi", gpus=3))]
    documents = [node_document(node, pods), node_document(make_node("cpu-1", 8, 32), [])]
    page = render(documents)
    assert row_names(page) == ["gpu-a", "cpu-1"]  # the free GPU first
    gpu_row = page[page.index('<div class="name">gpu-a') : page.index('<div class="name">cpu-1')]
    # make_node keeps 100m and 1 GiB for the system: 63.9 cores, 511 GiB allocatable
    assert "47.9 of 63.9 cores free" in gpu_row
    assert "383 of 511 GiB free" in gpu_row
    assert "1 of 4 GPUs free" in gpu_row
    assert 'class="meter tight"' in gpu_row  # a quarter of the GPUs left
    assert '<rect class="fill" width="25.0"' in gpu_row
    assert "NVIDIA A100 SXM4 80GB" in gpu_row
    assert "80 GiB each" in gpu_row
    assert 'aria-label="GPUs: 1 of 4 GPUs free"' in gpu_row
    cpu_row = page[page.index('<div class="name">cpu-1') :]
    assert "7.9 of 7.9 cores free" in cpu_row
    assert '<span class="muted">none</span>' in cpu_row.split("</tr>")[0]
    # the totals and the GPU model table
    assert "Cluster availability" in page
    assert "2 <small>of 2 schedulable</small>" in page
    assert "1 on gpu-a, with 47.9 cores and 383 GiB" in page


def test_gpu_utilisation_shows_where_dcgm_reports_it():
    rtx = GPU_MODELS[2]  # 2 GPUs
    metrics = {
        0: {"utilization": 87.0, "memory_used_mib": 20000, "memory_free_mib": 4564},
        1: {"utilization": 3.0},
    }
    node = node_document(make_node("gpu-node-01", rtx.cpu, rtx.memory_gi, rtx, 1), [], metrics)
    page = render([node])
    assert '<span class="chip busy" title="GPU 0: 87% busy, 20 of 24 GiB used">' in page
    assert "GPU 0: 87%" in page and "GPU 1: 3%" in page
    # without metrics there are no chips, only the bar
    assert "chip" not in render(cluster(3, 1)).split("<footer>")[0].split("</style>")[1]


def test_everything_stored_is_escaped():
    a100 = GPU_MODELS[0]
    raw = make_node("gpu-a", a100.cpu, a100.memory_gi, a100, 1)
    raw["metadata"]["labels"]["node.kubernetes.io/instance-type"] = HOSTILE
    raw["metadata"]["labels"]["nvidia.com/gpu.product"] = HOSTILE
    raw["spec"]["taints"] = [{"key": "k", "value": HOSTILE, "effect": "NoSchedule"}]
    node = node_document(raw, [])
    node["name"] = HOSTILE
    node["reason"] = HOSTILE
    cloud = {
        "configured": True,
        "offers": [
            {
                "gpu_type_id": HOSTILE,
                "display_name": HOSTILE,
                "vram_gb": 24,
                "cloud_type": HOSTILE,
                "price_per_hour": 0.69,
                "spot_price_per_hour": None,
                "stock": HOSTILE,
                "gpu_count": 1,
            }
        ],
        "fetched_at": GENERATED,
        "error": HOSTILE,
    }
    stale = {**FRESH, "stale": True, "age_seconds": 5}
    page = render(
        [node],
        freshness=stale,
        not_ready_reason=HOSTILE,
        cloud=cloud,
        query=PageQuery(text=HOSTILE[:40]),
        user=HOSTILE,
        xsrf=HOSTILE,
    )
    # the only tags are the page's own: one script, no img, no stray attribute
    assert page.count("<script") == 1
    assert "<img" not in page and "onerror=alert(1)>" not in page
    escaped = (
        "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;&amp;amp;"
    )
    for context in (
        f'<div class="name">{escaped}</div>',  # the node's name
        f'<div class="muted small">{escaped}</div>',  # its instance type
        f'<span class="badge warn">{escaped}</span>',  # why it is unschedulable
        f'title="k={escaped}:NoSchedule"',  # its taint, in an attribute
        f'<div class="gpu-model">{escaped} <span',  # the GPU model from GFD's label
        f": {escaped}.\n",  # why the data is stale
        f"Signed in as {escaped}</span>",
        f'data-xsrf="{escaped}"',
        f'<tr><th scope="row">{escaped}</th><td>24 GB</td>',  # the cloud offer
        f"Offers not refreshed: {escaped}</p>",
        'name="q" value="&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x on"',
    ):
        assert context in page, context


def test_lone_surrogates_become_replacement_characters():
    node = cluster(1, 1)[0]
    node["name"] = "gpu-\ud800-a"
    node["gpu"]["model"] = "A100 \udfff"
    # as the service holds them: parsed from its own published JSON
    nodes = json.loads(json.dumps([node]))
    assert nodes[0]["name"] == "gpu-\ud800-a"
    page = render(nodes, not_ready_reason="\udc00")
    assert "gpu-\ufffd-a" in page
    assert "A100 \ufffd" in page
    # a proper pair (an emoji written as JSON escapes) stays what it is
    node["name"] = json.loads('"\\ud83d\\ude80-node"')
    assert "\U0001f680-node" in render([node])


def test_an_empty_cluster_says_so():
    page = render([])
    assert "No nodes in the cluster yet." in page
    assert "0 <small>of 0 schedulable</small>" in page
    assert '<table class="nodes">' not in page
    assert "GPU models" not in page
    assert "None" in page.split("<h2>GPUs</h2>")[1].split("</div>")[0]


def test_fresh_data_is_live_with_the_time_of_the_last_change():
    page = render(cluster(2, 0))
    assert '<p id="freshness" class="freshness fresh">' in page
    assert "<strong>Live</strong>: kept up to date as the cluster changes." in page
    assert 'Last change <span data-age="80.0">1 min 20 s</span> ago.' in page


def test_stale_data_says_for_how_long_and_why():
    stale = {**FRESH, "stale": True, "age_seconds": 125.4}
    page = render(
        cluster(2, 0),
        freshness=stale,
        not_ready_reason="Kubernetes API unreachable (connection refused)",
    )
    assert '<p id="freshness" class="freshness stale">' in page
    assert (
        '<strong>May be out of date</strong> for <span data-age="125.4">2 min 5 s</span>: '
        "Kubernetes API unreachable (connection refused)." in page
    )
    assert "Live" not in page.split("<footer>")[0]


def test_one_machine_is_this_machine():
    node = machine_document(
        {
            "hostname": "workstation",
            "cores": list(range(16)),
            "memory_total": 64 * GIB,
            "memory_available": 60 * GIB,
        },
        RECORDS["workstation_two_models"],
        [],
    )
    summary = summary_document([node])
    summary["local"] = {"gpu_status": "NVML found 3 GPU(s)", "hostname": "workstation"}
    page = render([node], summary)
    assert "<h1>This machine</h1>" in page
    assert '<span class="host">workstation</span>' in page
    assert row_names(page) == ["workstation"]
    assert "16 of 16 cores free" in page
    assert "GPU 0: 37%" in page  # NVML's utilisation
    # two kinds of card on the machine: both named, each with its memory
    assert (
        '<div class="gpu-model">NVIDIA GeForce RTX 4090 (24 GiB) + NVIDIA GeForce RTX 3090 '
        "(24 GiB)</div>" in page
    )
    assert "1 of 1 GPU free" in page and "2 of 2 GPUs free" in page
    assert "Most free on one node" not in page
    # one machine: no node count, no filter form, no pager
    assert "schedulable</small>" not in page
    assert '<form class="filter"' not in page
    assert "Servers</th>" in page
    assert '<td class="num">0</td>' in page  # the hub's active servers, no "of" limit


def test_five_thousand_nodes_make_a_small_page_of_the_roomiest():
    nodes = cluster(5000, 600, seed=7)
    # the first GPU node gets busy: it drops below the nodes with free GPUs
    busy = nodes[0]
    busy["available"]["gpu"] = 0
    page = render(nodes)
    assert len(page.encode()) < 250_000
    names = row_names(page)
    assert len(names) == 50
    # schedulable nodes with the most free GPUs first: the H100 nodes (8 each)
    assert all(name.startswith("gpu-node-") for name in names)
    assert "Showing 1–50 of 5,000 nodes, page 1 of 100." in page
    assert '<a rel="next" href="?page=2">Next →</a>' in page
    assert "prev" not in page.split('<nav class="pager"')[1].split("</nav>")[0]
    # the last page, and a page past the end (the cluster shrank) shows the last page
    for asked in (100, 900):
        last = render(nodes, query=PageQuery(page=asked))
        assert "page 100 of 100." in last
        assert len(row_names(last)) == 50
        assert '<a rel="prev" href="?page=99">← Previous</a>' in last
        assert 'rel="next"' not in last


def test_the_filter_narrows_and_keeps_the_query_in_page_links():
    nodes = cluster(300, 60, seed=3)
    query = PageQuery(text="h100", gpu="free", sort="name")
    selection = select_nodes(nodes, query, 4)
    h100 = sorted(n["name"] for n in nodes if n["gpu"] and "H100" in n["gpu"]["model"])
    assert selection.matching == len(h100) == 10
    assert [n["name"] for n in selection.rows] == h100[:4]
    page = render(nodes, query=query, rows_per_page=4)
    assert "Showing 1–4 of 10 matching (300 in all) nodes, page 1 of 3." in page
    assert 'href="?q=h100&amp;gpu=free&amp;sort=name&amp;page=2"' in page
    assert '<option value="free" selected>' in page
    assert '<option value="name" selected>' in page
    # without GPUs, and a search that finds nothing
    no_gpu = select_nodes(nodes, PageQuery(gpu="no"), 1000)
    assert no_gpu.matching == 240 and all(not n["gpu"] for n in no_gpu.rows)
    assert "No node matches." in render(nodes, query=PageQuery(text="zzz"))


def test_unschedulable_nodes_come_last_and_say_why():
    nodes = cluster(3, 1)
    cordoned = copy.deepcopy(nodes[0])
    cordoned.update(name="gpu-cordoned", schedulable=False, reason="cordoned")
    page = render([cordoned, *nodes])
    assert row_names(page)[-1] == "gpu-cordoned"
    assert '<span class="badge warn">cordoned</span>' in page


@pytest.mark.parametrize(
    ("arguments", "field", "message"),
    [
        ({"page": "0"}, "page", "page must be a whole number from 1 to 1000000"),
        ({"page": "two"}, "page", "page must be a whole number from 1 to 1000000"),
        ({"page": "²"}, "page", "page must be a whole number from 1 to 1000000"),
        ({"gpu": "maybe"}, "gpu", f"gpu must be one of {', '.join(GPU_FILTERS)}"),
        ({"sort": "price"}, "sort", "sort must be one of room, name"),
        ({"q": "x" * 101}, "q", "the search text must be at most 100 characters"),
    ],
)
def test_bad_query_arguments_are_named(arguments, field, message):
    with pytest.raises(PageQueryError) as caught:
        parse_query(arguments)
    assert caught.value.field == field
    assert str(caught.value) == message


def test_query_arguments_and_their_links():
    assert parse_query({}) == PageQuery()
    query = parse_query({"q": "  a100 ", "gpu": "yes", "sort": "name", "page": "3", "x": "y"})
    assert query == PageQuery(text="a100", gpu="yes", sort="name", page=3)
    assert query.params(page=4) == "?q=a100&gpu=yes&sort=name&page=4"
    assert PageQuery().params() == "?"
    assert PageQuery(text="a b&c").params() == "?q=a+b%26c"


def test_cloud_offers_cheapest_first_with_prices():
    offers = [
        {
            "gpu_type_id": f"gpu-{i}",
            "display_name": f"RTX {i}",
            "vram_gb": 24,
            "cloud_type": "COMMUNITY",
            "price_per_hour": 0.2 + i / 100,
            "spot_price_per_hour": 0.1 if i == 0 else None,
            "stock": "High",
            "gpu_count": 2 if i == 1 else 1,
        }
        for i in range(15)
    ]
    cloud = {
        "configured": True,
        "offers": offers,
        "fetched_at": GENERATED,
        "error": None,
    }
    page = render(cluster(2, 0), cloud=cloud)
    section = page.split('<section id="cloud" data-live>')[1].split("</section>")[0]
    rows = re.findall(r"<tr><th scope=\"row\">([^<]*)</th>", section)
    assert rows[:2] == ["RTX 0", "2× RTX 1"]
    assert len(rows) == 12
    assert '<td class="num">$0.20/h</td><td class="num">$0.10/h</td>' in section
    assert "<td>Community</td>" in section
    assert "3 more offers in the" in section
    assert 'prices as of <span data-age="80.0">1 min 20 s</span> ago' in section
    assert 'href="/services/thinkube-resources/api/v1/cloud/offers">Cloud offers (JSON)' in page
    # not configured: no section, no link
    off = render(cluster(2, 0), cloud={"configured": False, "offers": [], "reason": "no key"})
    assert 'id="cloud"' not in off and "Cloud offers (JSON)" not in off
    # configured, the first fetch failed: the reason, no table
    failed = render(
        cluster(2, 0),
        cloud={
            "configured": True,
            "offers": [],
            "fetched_at": None,
            "error": "RunPod answered 401",
        },
    )
    assert "Offers not refreshed: RunPod answered 401" in failed


def test_links_to_the_json_api_and_the_openapi_document():
    page = render(cluster(2, 0))
    links = dict(
        (label, href)
        for href, label in re.findall(r'<a href="(/services/[^"]+)">([^<]+)</a>', page)
    )
    assert links == {
        "Availability (JSON)": "/services/thinkube-resources/api/v1/availability",
        "Nodes (JSON)": "/services/thinkube-resources/api/v1/cluster/resources",
        "Summary (JSON)": "/services/thinkube-resources/api/v1/cluster/summary",
        "OpenAPI document": "/services/thinkube-resources/api/v1/openapi.json",
        "API docs (browse and try)": "/services/thinkube-resources/api/v1/docs",
    }
    assert '<a href="/hub/home">Back to the hub</a>' in page


def test_the_inline_style_and_script_are_the_ones_the_policy_allows():
    page = render(cluster(2, 0))
    for tag, directive in (("style", "style-src"), ("script", "script-src")):
        (source,) = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        digest = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}';" in CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert "connect-src 'self'" in CONTENT_SECURITY_POLICY


def test_a_warned_gpu_server_shows_why_and_a_keep_button_others_do_not():
    def usage(server: str, state: str, reason: str, utilization) -> dict:
        return {
            "user": "alice",
            "server": server,
            "decision": {"state": state, "reason": reason},
            "history": [{"at": "x", "gpus": [{"gpu": "GPU 0 (A100)", "utilization": utilization}]}],
        }

    prefix = "/services/thinkube-resources/"
    warned = gpu_server_view(
        usage(
            "",
            "warned",
            "GPU 0 (A100) at 0–2 % for the last 2 h 10 min; this server stops at 15:40 UTC "
            "unless you keep it",
            1.0,
        ),
        prefix,
    )
    unknown = gpu_server_view(
        usage("big <b>one</b>", "no-data", "no GPU metrics: nothing is decided", None), prefix
    )
    assert warned["keep"] == "/services/thinkube-resources/servers/alice/keep"
    assert (
        unknown["keep"]
        == "/services/thinkube-resources/servers/alice/big%20%3Cb%3Eone%3C%2Fb%3E/keep"
    )
    page = render([], gpu_servers=[warned, unknown], xsrf="x5rf")
    section = page.split('<section id="gpu-servers"', 1)[1].split("</section>", 1)[0]
    assert "this server stops at 15:40 UTC unless you keep it" in section
    assert "idle: stops unless kept" in section and "now GPU 0 (A100): 1 %" in section
    assert section.count("Keep this server") == 1  # only the warned one
    assert f'action="{warned["keep"]}"' in section and 'value="x5rf"' in section
    assert "no GPU metrics" in section and "GPU 0 (A100): no metric" in section
    assert "<b>one</b>" not in section and "big &lt;b&gt;one&lt;/b&gt;" in section
    # nobody's GPU servers: the section is there, hidden, for the refresh to fill
    assert '<section id="gpu-servers" data-live hidden>' in render([])
