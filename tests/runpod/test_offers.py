"""Offers from gpuTypes: pure functions, fed with data shaped as RunPod answers."""

from __future__ import annotations

import pytest

from thinkube_core.runpod.offers import (
    Offer,
    filter_offers,
    offers_from_gpu_types,
    select_offers,
    sort_offers,
)


def gpu_type(
    id,
    name,
    memory,
    secure=None,
    community=None,
    secure_spot=None,
    community_spot=None,
    secure_lowest=None,
    community_lowest=None,
):
    data = {
        "id": id,
        "displayName": name,
        "memoryInGb": memory,
        "secureCloud": secure is not None,
        "communityCloud": community is not None,
        "securePrice": secure,
        "communityPrice": community,
        "secureSpotPrice": secure_spot,
        "communitySpotPrice": community_spot,
    }
    if secure_lowest is not None:
        data["secureLowestPrice"] = secure_lowest
    if community_lowest is not None:
        data["communityLowestPrice"] = community_lowest
    return data


def lowest(price, bid, stock):
    return {"uninterruptablePrice": price, "minimumBidPrice": bid, "stockStatus": stock}


GPU_TYPES = [
    gpu_type(
        "NVIDIA GeForce RTX 4090",
        "RTX 4090",
        24,
        secure=0.69,
        community=0.34,
        secure_spot=0.35,
        community_spot=0.2,
        secure_lowest=lowest(0.69, 0.35, "High"),
        community_lowest=lowest(0.34, 0.2, "Low"),
    ),
    gpu_type(
        "NVIDIA A100 80GB PCIe",
        "A100 PCIe",
        80,
        secure=1.64,
        community=1.19,
        secure_spot=0.82,
        community_spot=None,
        secure_lowest=lowest(1.64, 0.82, "Medium"),
        community_lowest=lowest(1.19, None, None),
    ),
    gpu_type("NVIDIA L4", "L4", 24, secure=0.43, secure_spot=0.22),  # no lowestPrice asked
    gpu_type("NVIDIA RTX A4000", "RTX A4000", 16, secure=0.25, community=0.17),
    gpu_type("unknown", "unknown", 0),  # RunPod lists a placeholder type with no prices
]


def by_key(offers):
    return {(o.gpu_type_id, o.cloud_type): o for o in offers}


def test_one_offer_per_gpu_type_and_cloud_with_its_prices_and_stock():
    offers = by_key(offers_from_gpu_types(GPU_TYPES))
    assert set(offers) == {
        ("NVIDIA GeForce RTX 4090", "SECURE"),
        ("NVIDIA GeForce RTX 4090", "COMMUNITY"),
        ("NVIDIA A100 80GB PCIe", "SECURE"),
        ("NVIDIA A100 80GB PCIe", "COMMUNITY"),
        ("NVIDIA L4", "SECURE"),
        ("NVIDIA RTX A4000", "SECURE"),
        ("NVIDIA RTX A4000", "COMMUNITY"),
    }
    assert offers[("NVIDIA GeForce RTX 4090", "COMMUNITY")] == Offer(
        gpu_type_id="NVIDIA GeForce RTX 4090",
        display_name="RTX 4090",
        vram_gb=24,
        cloud_type="COMMUNITY",
        price_per_hour=0.34,
        spot_price_per_hour=0.2,
        stock="Low",
        gpu_count=1,
    )
    a100 = offers[("NVIDIA A100 80GB PCIe", "COMMUNITY")]
    assert (a100.price_per_hour, a100.spot_price_per_hour, a100.stock) == (1.19, None, None)
    l4 = offers[("NVIDIA L4", "SECURE")]  # catalogue prices when lowestPrice is absent
    assert (l4.price_per_hour, l4.spot_price_per_hour, l4.stock) == (0.43, 0.22, None)


def test_lowest_price_wins_over_the_catalogue_price():
    data = [
        gpu_type(
            "NVIDIA L40S",
            "L40S",
            48,
            secure=0.86,
            secure_spot=0.43,
            secure_lowest=lowest(0.79, 0.40, "High"),
        )
    ]
    (offer,) = offers_from_gpu_types(data)
    assert (offer.price_per_hour, offer.spot_price_per_hour) == (0.79, 0.40)


def test_a_plain_lowest_price_serves_both_clouds():
    data = gpu_type("NVIDIA RTX A5000", "RTX A5000", 24, secure=0.29, community=0.22)
    data["lowestPrice"] = lowest(0.2, 0.11, "Medium")
    offers = by_key(offers_from_gpu_types([data]))
    assert offers[("NVIDIA RTX A5000", "SECURE")].stock == "Medium"
    assert offers[("NVIDIA RTX A5000", "COMMUNITY")].price_per_hour == 0.2


def test_prices_are_for_all_gpus_of_the_offer():
    offers = by_key(offers_from_gpu_types(GPU_TYPES, gpu_count=4))
    offer = offers[("NVIDIA GeForce RTX 4090", "SECURE")]
    assert (offer.gpu_count, offer.price_per_hour, offer.spot_price_per_hour) == (4, 2.76, 1.4)
    assert offer.bid_per_gpu() == 0.35
    assert offer.label() == "4x RTX 4090 24 GB, $2.76/h on demand, $1.40/h spot, stock high"
    with pytest.raises(ValueError):
        offers_from_gpu_types(GPU_TYPES, gpu_count=0)


def test_label_and_key():
    offer = by_key(offers_from_gpu_types(GPU_TYPES))[("NVIDIA GeForce RTX 4090", "SECURE")]
    assert offer.label() == "RTX 4090 24 GB, $0.69/h on demand, $0.35/h spot, stock high"
    assert offer.key == "SECURE:NVIDIA GeForce RTX 4090:1"
    a4000 = by_key(offers_from_gpu_types(GPU_TYPES))[("NVIDIA RTX A4000", "COMMUNITY")]
    assert a4000.label() == "RTX A4000 16 GB, $0.17/h on demand, stock unknown"


@pytest.mark.parametrize(
    ("stock", "in_stock"),
    [
        ("High", True),
        ("Medium", True),
        ("Low", True),
        (None, False),  # RunPod's stockStatus is null when none can be rented
        ("", False),
        ("None", False),
        ("Out of Stock", False),
    ],
)
def test_in_stock_is_what_runpod_reports_free(stock, in_stock):
    offer = Offer("NVIDIA L4", "L4", 24, "SECURE", 0.43, None, stock)
    assert offer.in_stock is in_stock


def test_sorted_by_price_cheapest_first():
    offers = select_offers(GPU_TYPES)
    assert [(o.display_name, o.cloud_type, o.price_per_hour) for o in offers] == [
        ("RTX A4000", "COMMUNITY", 0.17),
        ("RTX A4000", "SECURE", 0.25),
        ("RTX 4090", "COMMUNITY", 0.34),
        ("L4", "SECURE", 0.43),
        ("RTX 4090", "SECURE", 0.69),
        ("A100 PCIe", "COMMUNITY", 1.19),
        ("A100 PCIe", "SECURE", 1.64),
    ]


def test_spot_keeps_offers_with_a_spot_price_and_sorts_by_it():
    offers = select_offers(GPU_TYPES, spot=True)
    assert [(o.display_name, o.cloud_type, o.spot_price_per_hour) for o in offers] == [
        ("RTX 4090", "COMMUNITY", 0.2),
        ("L4", "SECURE", 0.22),
        ("RTX 4090", "SECURE", 0.35),
        ("A100 PCIe", "SECURE", 0.82),
    ]


def test_filters():
    offers = offers_from_gpu_types(GPU_TYPES)
    names = lambda kept: sorted((o.display_name, o.cloud_type) for o in kept)  # noqa: E731
    assert names(filter_offers(offers, min_vram_gb=48)) == [
        ("A100 PCIe", "COMMUNITY"),
        ("A100 PCIe", "SECURE"),
    ]
    assert names(filter_offers(offers, max_price_per_hour=0.34)) == [
        ("RTX 4090", "COMMUNITY"),
        ("RTX A4000", "COMMUNITY"),
        ("RTX A4000", "SECURE"),
    ]
    # With spot the cap applies to the spot price.
    assert names(filter_offers(offers, max_price_per_hour=0.35, spot=True)) == [
        ("L4", "SECURE"),
        ("RTX 4090", "COMMUNITY"),
        ("RTX 4090", "SECURE"),
    ]
    assert names(filter_offers(offers, gpu="a100")) == [
        ("A100 PCIe", "COMMUNITY"),
        ("A100 PCIe", "SECURE"),
    ]
    assert names(filter_offers(offers, gpu="GeForce")) == [  # matches the type id too
        ("RTX 4090", "COMMUNITY"),
        ("RTX 4090", "SECURE"),
    ]
    assert names(filter_offers(offers, cloud_type="community", min_vram_gb=24)) == [
        ("A100 PCIe", "COMMUNITY"),
        ("RTX 4090", "COMMUNITY"),
    ]
    assert len(filter_offers(offers, cloud_type="ALL")) == len(offers)
    assert filter_offers(offers, min_vram_gb=24, max_price_per_hour=0.3) == []
    with pytest.raises(ValueError):
        filter_offers(offers, cloud_type="PRIVATE")


def test_equal_prices_sort_by_stock_then_memory():
    data = [
        gpu_type("a", "A", 24, secure=0.5, secure_lowest=lowest(0.5, None, "Low")),
        gpu_type("b", "B", 48, secure=0.5, secure_lowest=lowest(0.5, None, None)),
        gpu_type("c", "C", 16, secure=0.5, secure_lowest=lowest(0.5, None, "High")),
        gpu_type("d", "D", 80, secure=0.5, secure_lowest=lowest(0.5, None, "Low")),
    ]
    assert [o.display_name for o in sort_offers(offers_from_gpu_types(data))] == [
        "C",
        "D",
        "A",
        "B",
    ]
