"""What a model needs of a node, and what Karpenter leaves to pods: the arithmetic and its boundaries."""

from __future__ import annotations

import re

from charts.sizing import allocatable_memory_mib, gpu_memory_needed_mib
from settings import load_stage_settings, parse_stage_settings
from tests.conftest import ROOT, stage_data

# Memory of the instances the README names (MiB): aws/karpenter-provider-aws instance-types.md.
INSTANCE_MEMORY_MIB = {"g5.xlarge": 16384, "g6.xlarge": 16384, "g5.2xlarge": 32768, "g6.2xlarge": 32768}
INSTANCE_MEMORY_MIB["g6e.xlarge"] = 32768
MIB_PER_GIB = 1024


def test_karpenter_leaves_about_13_gib_of_16_and_28_gib_of_32() -> None:
    # 16384 - ceil(7.5 %) - (255 + 11 x 110) - 100
    assert allocatable_memory_mib(16384) == 16384 - 1229 - 1465 - 100 == 13590
    assert allocatable_memory_mib(32768) == 32768 - 2458 - 1465 - 100 == 28745
    # Fewer pods per node reserve less.
    assert allocatable_memory_mib(16384, max_pods=58) == 13590 + 11 * (110 - 58)


def test_the_default_memory_request_needs_a_32_gib_node() -> None:
    resources = load_stage_settings("dev").models[0].resources
    request_mib = int(resources.memory.removesuffix("Gi")) * MIB_PER_GIB
    assert request_mib > allocatable_memory_mib(16384)  # no g5.xlarge or g6.xlarge
    assert request_mib <= allocatable_memory_mib(32768)  # g6e.xlarge, g5.2xlarge, g6.2xlarge


def test_the_readme_names_the_smallest_nodes_the_default_requests_fit() -> None:
    readme = (ROOT / "README.md").read_text()
    text = " ".join(readme.split())
    (sentence,) = re.findall(r"smallest GPU nodes that fit one replica with the default requests are (.+?)\.\s", text)
    named = set(re.findall(r"`([a-z0-9]+\.[0-9a-z]+)`", sentence))
    assert named == {"g6e.xlarge", "g5.2xlarge", "g6.2xlarge"}
    request_mib = int(load_stage_settings("dev").models[0].resources.memory.removesuffix("Gi")) * MIB_PER_GIB
    assert all(request_mib <= allocatable_memory_mib(INSTANCE_MEMORY_MIB[name]) for name in named)
    assert "g6.xlarge" in readme
    assert request_mib > allocatable_memory_mib(INSTANCE_MEMORY_MIB["g6.xlarge"])


def test_gpu_memory_needed_covers_the_shard_and_the_runtime_within_the_utilization() -> None:
    model = load_stage_settings("dev").models[0]  # 13.8 GB of weights at 0.90
    assert gpu_memory_needed_mib(model) == 19175
    assert gpu_memory_needed_mib(model) < 22888  # an L4 or A10G
    assert gpu_memory_needed_mib(model) > 11444  # the largest fraction of an L4 (g6f.4xlarge)


def test_more_gpus_need_less_memory_each() -> None:
    data = stage_data()
    data["models"][0] |= {"weights_gb": 141, "gpus": 4, "tensor_parallel_size": 4}
    four = parse_stage_settings("dev", data).models[0]
    data["models"][0] |= {"gpus": 8, "tensor_parallel_size": 8}
    eight = parse_stage_settings("dev", data).models[0]
    assert gpu_memory_needed_mib(eight) < gpu_memory_needed_mib(four)
    assert gpu_memory_needed_mib(four) > 22888  # 35 GB of weights a GPU: no L4 or A10G
