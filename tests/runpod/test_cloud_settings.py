"""The cloud settings and the user's request, as pure functions (no servers)."""

from __future__ import annotations

import shlex
from html.parser import HTMLParser

import pytest
from traitlets.config import Config

from tests.runpod_fake import DEFAULT_GPU_TYPES
from thinkube_core.runpod import Offer
from thinkube_core.runpod.errors import ConfigurationError
from thinkube_spawner.runpod.options import (
    CloudRequest,
    OptionsError,
    candidate_offers,
    options_from_form,
    parse_user_options,
    render_form,
)
from thinkube_spawner.runpod.settings import (
    MAX_POD_NAME,
    RunPodCloudSettings,
    cloud_enabled,
    pod_env,
    pod_name,
    price_cap_for,
    public_hub_url,
    singleuser_docker_args,
)
from thinkube_spawner.runpod.spawner import RemoteRunPodSpawner


def offers() -> list[Offer]:
    """The stand-in's catalogue as offers (one GPU), as RunPod's gpuTypes would give."""
    result = []
    for spec in DEFAULT_GPU_TYPES:
        for cloud in ("SECURE", "COMMUNITY"):
            price = spec.price(cloud)
            if price is None:
                continue
            result.append(
                Offer(
                    gpu_type_id=spec.id,
                    display_name=spec.display_name,
                    vram_gb=spec.memory_gb,
                    cloud_type=cloud,
                    price_per_hour=price,
                    spot_price_per_hour=spec.spot_price(cloud),
                    stock="High",
                )
            )
    return result


# -- price caps ------------------------------------------------------------------------


def test_price_cap_user_wins_then_the_highest_group_then_the_default():
    users = {"alice": 3.0, "intern": 0}
    groups = {"students": 0.5, "power": 4.0}
    assert price_cap_for("alice", ["students"], 1.0, users, groups) == 3.0
    assert price_cap_for("intern", ["power"], 1.0, users, groups) == 0.0
    assert price_cap_for("bob", ["students", "power"], 1.0, users, groups) == 4.0
    assert price_cap_for("carol", ["students"], 1.0, users, groups) == 0.5
    assert price_cap_for("dave", ["others"], 1.0, users, groups) == 1.0
    assert price_cap_for("dave", [], -2, {}, {}) == 0.0


def test_cloud_is_enabled_when_any_cap_is_positive():
    assert not cloud_enabled(0, {}, {})
    assert not cloud_enabled(0, {"a": 0}, {"g": 0})
    assert cloud_enabled(0, {"a": 0.5}, {})
    assert cloud_enabled(0, {}, {"g": 2})
    assert cloud_enabled(1, {}, {})


def test_shared_section_and_spawner_section_both_configure_the_spawner():
    config = Config()
    config.RunPodCloudSettings.cloud_price_cap = 2.0
    config.RunPodCloudSettings.cloud_pod_name_prefix = "lab1"
    config.RemoteRunPodSpawner.cloud_price_cap = 3.0  # the more specific section wins
    spawner = RemoteRunPodSpawner(config=config, _mock=True)
    assert spawner.cloud_price_cap == 3.0
    assert spawner.cloud_pod_name_prefix == "lab1"
    assert spawner.cloud_user_price_caps == {}
    with pytest.raises(Exception, match="lower-case letters"):
        RunPodCloudSettings(cloud_pod_name_prefix="Bad Prefix!")


def test_every_cloud_setting_is_configurable_with_a_help_text_and_an_example():
    traits = RunPodCloudSettings.class_traits(config=True)
    assert len(traits) >= 15
    for name, trait in traits.items():
        assert trait.help and "e.g." in trait.help.lower(), name


# -- names, command, environment -------------------------------------------------------


def test_pod_names_mark_the_hub_user_and_server_under_60_characters():
    assert pod_name("thinkube", "alice") == "thinkube-alice"
    assert pod_name("thinkube", "alice", "gpu-1") == "thinkube-alice-gpu-1"
    assert (
        pod_name("lab", "Jane.Doe@Example.org", "my server") == "lab-jane.doe-example.org-my-server"
    )
    long_a = pod_name("thinkube", "u" * 80, "a")
    long_b = pod_name("thinkube", "u" * 80, "b")
    assert len(long_a) <= MAX_POD_NAME and len(long_b) <= MAX_POD_NAME
    assert long_a != long_b and long_a.startswith("thinkube-uuu")


def test_docker_args_run_singleuser_on_8888_and_install_the_hubs_version_if_missing():
    args = singleuser_docker_args("6.1.1")
    argv = shlex.split(args)
    assert argv[:2] == ["bash", "-c"] and len(argv) == 3
    script = argv[2]
    assert "command -v jupyterhub-singleuser" in script
    assert "pip install --no-cache-dir jupyterhub==6.1.1" in script
    assert script.endswith("exec jupyterhub-singleuser --ip=0.0.0.0 --port=8888 --allow-root")
    quoted = shlex.split(shlex.split(singleuser_docker_args("", allow_origin="https://h.org"))[2])
    assert quoted[-1] == "--ServerApp.allow_origin=https://h.org"
    assert "jupyterhub jupyter_server;" in " ".join(quoted)  # no version: the latest


def test_cloud_problems_name_what_is_missing_without_the_key(monkeypatch, tmp_path):
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    monkeypatch.delenv("RUNPOD_API_KEY_FILE", raising=False)
    assert RunPodCloudSettings().cloud_problems() == []  # cloud off: nothing to say
    settings = RunPodCloudSettings(cloud_price_cap=1.0)
    problems = settings.cloud_problems()
    assert any("set c.JupyterHub.public_url" in p for p in problems)
    assert any("no RunPod API key" in p for p in problems)
    key_file = tmp_path / "key"
    key_file.write_text("rpa_SECRET_VALUE\n")
    settings = RunPodCloudSettings(
        cloud_price_cap=1.0, runpod_api_key_file=str(key_file), runpod_api_url="ftp://x"
    )
    problems = settings.cloud_problems("https://hub.example.org/hub/")
    assert problems == ["Cloud GPUs cannot work: the RunPod API URL must be an http(s) URL."]
    settings.runpod_api_url = ""
    assert settings.cloud_problems("https://hub.example.org/hub/") == []
    config = settings.cloud_config("https://hub.example.org/hub/")
    assert config.api_key.reveal() == "rpa_SECRET_VALUE"
    assert config.public_hub_url == "https://hub.example.org/"
    assert "rpa_SECRET_VALUE" not in repr(config)


def test_public_hub_url_from_the_setting_or_jupyterhubs_public_url():
    assert public_hub_url("hub.example.org") == "https://hub.example.org/"
    assert public_hub_url("https://x.org/jupyter") == "https://x.org/jupyter/"
    # What JupyterHub passes spawners when c.JupyterHub.public_url is set: its /hub/ URL.
    assert public_hub_url("", "https://x.org/jupyter/hub/") == "https://x.org/jupyter/"
    assert public_hub_url("", "") == ""
    with pytest.raises(Exception, match="not an http"):
        public_hub_url("ftp://x.org/")


def test_pod_env_points_the_server_at_the_public_hub_and_binds_all_interfaces():
    env = {
        "JUPYTERHUB_API_TOKEN": "t0k3n",
        "JUPYTERHUB_API_URL": "http://10.0.0.5:8081/jupyter/hub/api",
        "JUPYTERHUB_ACTIVITY_URL": "http://10.0.0.5:8081/jupyter/hub/api/users/a/activity",
        "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:1234/jupyter/user/a/",
        "PATH": "/hub/venv/bin",
        "JUPYTERHUB_USER": "a",
    }
    out = pod_env(env, public_hub_url="https://x.org/jupyter/", server_base_url="/jupyter/user/a/")
    assert out["JUPYTERHUB_API_URL"] == "https://x.org/jupyter/hub/api"
    assert out["JUPYTERHUB_ACTIVITY_URL"] == "https://x.org/jupyter/hub/api/users/a/activity"
    assert out["JUPYTERHUB_SERVICE_URL"] == "http://0.0.0.0:8888/jupyter/user/a/"
    assert out["JUPYTERHUB_API_TOKEN"] == "t0k3n" and out["JUPYTERHUB_USER"] == "a"
    assert "PATH" not in out


# -- user options ----------------------------------------------------------------------


def test_user_options_parse_and_reject_unknown_names_and_bad_values():
    assert parse_user_options({}) == CloudRequest()
    request = parse_user_options(
        {"offer": "SECURE:NVIDIA L4:1", "spot": True, "fallback": "on", "cloud_type": "secure"}
    )
    assert request.offer_key == "SECURE:NVIDIA L4:1" and request.spot and request.fallback
    assert request.cloud_type == "SECURE"
    assert parse_user_options(request.as_user_options()) == request
    for bad, message in [
        ({"gpus": 8}, "Unknown option 'gpus'"),
        ({"spot": "maybe"}, "'spot' must be true or false"),
        ({"min_vram_gb": "lots"}, "'min_vram_gb' must be a number"),
        ({"max_price_per_hour": -1}, "at least 0"),
        ({"max_price_per_hour": float("nan")}, "at least 0"),
        ({"cloud_type": "MOON"}, "SECURE, COMMUNITY or ALL"),
        ({"offer": ["a"]}, "'offer' must be a short text"),
    ]:
        with pytest.raises(OptionsError, match=message):
            parse_user_options(bad)


def test_form_data_become_user_options():
    assert options_from_form({"offer": ["SECURE:x:1"], "spot": ["on"]}) == {
        "offer": "SECURE:x:1",
        "spot": True,
        "fallback": False,
    }
    assert options_from_form({}) == {"spot": False, "fallback": False}


def test_candidates_for_filters_are_the_cheapest_matching_within_the_cap():
    chosen = candidate_offers(offers(), CloudRequest(min_vram_gb=24), cap=0.5, attempts=3)
    assert [o.price_per_hour for o in chosen] == sorted(o.price_per_hour for o in chosen)
    assert all(o.vram_gb >= 24 and o.price_per_hour <= 0.5 for o in chosen)
    assert len(chosen) == 3
    spot = candidate_offers(offers(), CloudRequest(gpu="a100", spot=True), cap=1.0, attempts=3)
    assert [(o.cloud_type, o.spot_price_per_hour) for o in spot] == [
        ("COMMUNITY", 0.60),
        ("SECURE", 0.82),
    ]
    with pytest.raises(
        OptionsError, match=r"No cloud GPU offer matches your request within \$0\.10/h"
    ):
        candidate_offers(offers(), CloudRequest(), cap=0.1, attempts=3)
    with pytest.raises(OptionsError, match="not available to you"):
        candidate_offers(offers(), CloudRequest(), cap=0, attempts=3)


def test_a_chosen_offer_comes_first_and_falls_back_only_when_asked():
    key = "SECURE:NVIDIA GeForce RTX 4090:1"
    alone = candidate_offers(offers(), CloudRequest(offer_key=key), cap=1.0, attempts=3)
    assert [o.key for o in alone] == [key]
    more = candidate_offers(offers(), CloudRequest(offer_key=key, fallback=True), 1.0, 3)
    assert more[0].key == key and len(more) == 3
    assert all(o.vram_gb >= 24 and o.price_per_hour <= 1.0 for o in more)
    with pytest.raises(
        OptionsError, match=r"H100 SXM costs \$2\.69/h on demand, over your cloud limit"
    ):
        candidate_offers(offers(), CloudRequest(offer_key="SECURE:NVIDIA H100 80GB HBM3:1"), 1.0, 3)
    with pytest.raises(OptionsError, match="Unknown cloud offer 'SECURE:NVIDIA B200:1'"):
        candidate_offers(offers(), CloudRequest(offer_key="SECURE:NVIDIA B200:1"), 9, 3)


class _Inputs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.inputs: list[dict] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "input":
            self.inputs.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def test_the_form_lists_offers_within_the_cap_and_escapes_everything():
    evil = Offer("x<script>", "<b>Evil</b> GPU", 24, "SECURE", 0.1, None, '"high', 1)
    page = render_form([*offers(), evil], 0.5, previous={"offer": evil.key})
    assert "<script>" not in page and "<b>Evil" not in page
    parsed = _Inputs()
    parsed.feed(page)
    radios = [i for i in parsed.inputs if i.get("type") == "radio"]
    assert {r["value"] for r in radios} >= {evil.key, "COMMUNITY:NVIDIA GeForce RTX 4090:1"}
    assert "SECURE:NVIDIA H100 80GB HBM3:1" not in {r["value"] for r in radios}
    checked = [r["value"] for r in radios if "checked" in r]
    assert checked == [evil.key]
    text = "".join(parsed.text)
    assert "RunPod community cloud: RTX 4090 24 GB, $0.34/h on demand, $0.20/h spot" in text
    assert "not on the lab's shared storage" in text
    assert "not available to you" in render_form(offers(), 0)
    assert "cannot be reached" in render_form([], 1.0, problem="RunPod cannot be reached")


async def test_with_the_availability_service_offers_come_from_its_cache(monkeypatch):
    """One offer source: a RemoteRunPodSpawner on a hub that runs the availability service
    asks the service (its cache), never RunPod, for the form and the start."""
    from types import SimpleNamespace

    from jupyterhub.objects import Hub

    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)  # RunPod could not even be asked
    offer = Offer("NVIDIA GeForce RTX 4090", "RTX 4090", 24, "SECURE", 0.69, 0.35, "High", 1)
    two_gpus = Offer("NVIDIA A40", "A40", 48, "SECURE", 0.79, None, "Low", 2)
    asked = []

    class ServiceCache:
        async def cloud_offers(self):
            asked.append("service")
            return [offer, two_gpus]

    config = Config()
    config.JupyterHub.services = [{"name": "thinkube-resources", "url": "http://127.0.0.1:8181"}]
    spawner = RemoteRunPodSpawner(
        config=config,
        hub=Hub(),
        user=SimpleNamespace(name="alice", id=7, url="/user/alice/"),
        cloud_price_cap=1.0,
    )
    assert spawner.availability_configured
    spawner._availability_client = ServiceCache()
    assert await spawner.fetch_offers() == [offer]  # priced for its one GPU
    assert asked == ["service"]
    # without the service, RunPod itself is the source (here: no key, so it says so)
    alone = RemoteRunPodSpawner(
        hub=Hub(), user=SimpleNamespace(name="bob", id=8, url="/user/bob/"), cloud_price_cap=1.0
    )
    assert not alone.availability_configured
    with pytest.raises(ConfigurationError):
        await alone.fetch_offers()
