"""The GPU instance catalog and its on-demand prices are well formed and match known values."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

CATALOG_DIR = Path(__file__).resolve().parent.parent / "settings" / "catalog"

ENTRY_TYPES: dict[str, type] = {
    "type": str,
    "family": str,
    "category": str,
    "generation": int,
    "vcpus": int,
    "memory_mib": int,
    "gpus": int,
    "gpu_model": str,
    "gpu_memory_mib": int,
    "architecture": str,
    "local_nvme_gib": int,
    "network_mbps": int,
}
GPU_COUNTS = (0, 1, 2, 4, 8)
ARCHITECTURES = ("amd64", "arm64")
# Families whose instances carry a slice of one GPU; Karpenter reports 0 GPUs for them.
FRACTIONAL_GPU_FAMILIES = frozenset({"g6f", "gr6f"})
COMMIT = re.compile(r"[0-9a-f]{40}")


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CATALOG_DIR / name).read_text())
    assert isinstance(data, dict), f"{name} must be a mapping"
    return data


@pytest.fixture(scope="module")
def catalog() -> dict[str, Any]:
    return load("gpu_instances.yaml")


@pytest.fixture(scope="module")
def instances(catalog: dict[str, Any]) -> list[dict[str, Any]]:
    entries = catalog["instances"]
    assert isinstance(entries, list)
    assert entries, "the catalog lists no instance types"
    return entries


@pytest.fixture(scope="module")
def by_type(instances: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["type"]: entry for entry in instances}


@pytest.fixture(scope="module")
def prices_file() -> dict[str, Any]:
    return load("on_demand_prices.yaml")


def check_source(source: Any) -> None:
    assert isinstance(source, dict)
    assert source["url"].startswith("https://github.com/")
    assert COMMIT.fullmatch(source["commit"])
    assert source["commit"] in source["url"], "the URL must pin the commit it was read at"


def test_catalog_records_its_source_and_date(catalog: dict[str, Any]) -> None:
    assert set(catalog) == {"source", "retrieved", "notes", "instances"}
    check_source(catalog["source"])
    assert catalog["retrieved"] == datetime.date(2026, 11, 28)
    assert isinstance(catalog["notes"], str)
    assert catalog["notes"].strip()


def test_every_entry_has_exactly_the_expected_keys_and_types(instances: list[dict[str, Any]]) -> None:
    for entry in instances:
        assert isinstance(entry, dict)
        assert set(entry) == set(ENTRY_TYPES), entry
        for key, expected in ENTRY_TYPES.items():
            # `type(...) is` so that a YAML boolean does not pass for an int.
            assert type(entry[key]) is expected, (entry["type"], key, entry[key])


def test_no_duplicate_types(instances: list[dict[str, Any]]) -> None:
    names = [entry["type"] for entry in instances]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert not duplicates


def test_type_is_family_dot_size(instances: list[dict[str, Any]]) -> None:
    for entry in instances:
        family, _, size = entry["type"].rpartition(".")
        assert family == entry["family"], entry["type"]
        assert re.fullmatch(r"[a-z0-9-]+", size), entry["type"]


def test_category_and_generation_agree_with_the_family_name(instances: list[dict[str, Any]]) -> None:
    for entry in instances:
        match = re.match(r"([a-z]+)(\d+)", entry["family"])
        assert match, entry["family"]
        assert entry["category"] == match[1], entry["type"]
        assert entry["generation"] == int(match[2]), entry["type"]
        assert entry["category"] in ("g", "gr", "p"), entry["type"]


def test_resource_values_are_plausible(instances: list[dict[str, Any]]) -> None:
    for entry in instances:
        name = entry["type"]
        assert entry["gpus"] in GPU_COUNTS, name
        assert entry["gpu_memory_mib"] > 0, name
        assert entry["vcpus"] > 0, name
        assert entry["memory_mib"] > 0, name
        assert entry["local_nvme_gib"] >= 0, name
        assert entry["architecture"] in ARCHITECTURES, name
        assert entry["gpu_model"].strip() == entry["gpu_model"], name
        assert entry["gpu_model"], name


def test_a_larger_size_of_a_family_never_has_less_network(instances: list[dict[str, Any]]) -> None:
    # EC2 gives an instance more baseline bandwidth with more vCPUs ("Amazon EC2 instance network bandwidth"), among
    # the sizes with as many GPUs (g5.12xlarge's four GPUs get more than g5.16xlarge's one); a figure out of that
    # order is a misread row.
    by_family: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for entry in instances:
        assert entry["network_mbps"] >= 1000, entry["type"]
        by_family.setdefault((entry["family"], entry["gpus"]), []).append((entry["vcpus"], entry["network_mbps"]))
    for family, sizes in by_family.items():
        networks = [network for _, network in sorted(sizes)]
        assert networks == sorted(networks), family


@pytest.mark.parametrize(
    ("name", "network_mbps"),
    # As Karpenter labels them (karpenter.k8s.aws/instance-network-bandwidth) on its reference page, the catalog's
    # source: website/content/en/preview/reference/instance-types.md at the commit.
    [("g6.xlarge", 2500), ("g6.4xlarge", 10000), ("g6e.xlarge", 2500), ("p5.48xlarge", 3200000)],
)
def test_network_bandwidth_is_karpenters_label(name: str, network_mbps: int, instances: list[dict[str, Any]]) -> None:
    (entry,) = [entry for entry in instances if entry["type"] == name]
    assert entry["network_mbps"] == network_mbps


def test_only_fractional_gpu_types_report_zero_gpus(instances: list[dict[str, Any]]) -> None:
    for entry in instances:
        assert (entry["gpus"] == 0) == (entry["family"] in FRACTIONAL_GPU_FAMILIES), entry["type"]


def test_sizes_of_a_family_share_gpu_model_and_architecture(instances: list[dict[str, Any]]) -> None:
    families: dict[str, set[tuple[str, str, int]]] = {}
    for entry in instances:
        families.setdefault(entry["family"], set()).add(
            (entry["gpu_model"], entry["architecture"], entry["generation"])
        )
    mixed = {family: values for family, values in families.items() if len(values) > 1}
    assert not mixed


@pytest.mark.parametrize(
    ("name", "vcpus", "memory_mib", "gpus", "gpu_model", "gpu_memory_mib"),
    [
        ("g6e.xlarge", 4, 32768, 1, "L40S", 45776),
        ("g6.xlarge", 4, 16384, 1, "L4", 22888),
        ("g5.12xlarge", 48, 196608, 4, "A10G", 22888),
        ("p5.48xlarge", 192, 2097152, 8, "H100", 81920),
    ],
)
def test_known_values(
    by_type: dict[str, dict[str, Any]],
    name: str,
    vcpus: int,
    memory_mib: int,
    gpus: int,
    gpu_model: str,
    gpu_memory_mib: int,
) -> None:
    entry = by_type[name]
    assert (entry["vcpus"], entry["memory_mib"], entry["gpus"], entry["gpu_model"], entry["gpu_memory_mib"]) == (
        vcpus,
        memory_mib,
        gpus,
        gpu_model,
        gpu_memory_mib,
    )


def test_only_instances_with_whole_nvidia_gpus_are_listed(by_type: dict[str, dict[str, Any]]) -> None:
    # The Auto Mode list has no fractional-GPU family (g6f, gr6f); g4ad's GPU is AMD, whose drivers
    # Auto Mode does not manage.
    assert all(entry["gpus"] >= 1 for entry in by_type.values())
    assert not [name for name in by_type if name.startswith(("g6f.", "gr6f.", "g4ad."))]


def test_prices_record_their_source_and_date(prices_file: dict[str, Any]) -> None:
    assert set(prices_file) == {"source", "generated", "notes", "prices"}
    check_source(prices_file["source"])
    # The catalog it comes from states no date: the file says so, and when it was read.
    assert "not stated in the file" in prices_file["generated"]
    assert "read 2026-12" in prices_file["generated"]
    assert isinstance(prices_file["notes"], str)
    assert "spot" in prices_file["notes"].lower()


def test_every_priced_type_is_in_the_catalog_and_prices_are_positive(
    prices_file: dict[str, Any], by_type: dict[str, dict[str, Any]]
) -> None:
    prices = prices_file["prices"]
    assert isinstance(prices, dict)
    assert prices, "no region has prices"
    for region, table in prices.items():
        assert re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", region), region
        assert isinstance(table, dict)
        assert table, region
        for name, price in table.items():
            assert name in by_type, (region, name)
            assert type(price) is float, (region, name, price)
            assert price > 0, (region, name)
