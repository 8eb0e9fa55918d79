"""What a model needs of a GPU node, and what a node offers to pods, in the units Karpenter uses.

Two estimates the GPU NodePool and the vLLM pods are built from: the memory each GPU must
have for a model's shard (rendered as an `eks.amazonaws.com/instance-gpu-memory` requirement,
so that fractional GPUs such as g6f's never qualify), and the memory Karpenter leaves to pods
on an instance (which decides the smallest instance a pod's requests fit).
"""

from __future__ import annotations

import math

from settings.model import ModelSettings

MIB = 2**20
GIB = 2**30
# Besides its share of the weights, each GPU holds the CUDA context, activations, CUDA graphs and
# a KV cache that fits at least one full-length sequence (vLLM refuses to start otherwise), all
# inside --gpu-memory-utilization of the GPU's memory (vLLM docs, "Engine arguments"). 4 GiB
# covers gpt-oss-20b's 20,000-token context (about 1 GB of KV cache) with room for CUDA graphs.
RUNTIME_RESERVE_BYTES = 4 * GIB
# The well-known label EKS Auto Mode puts on GPU nodes: memory per GPU, in MiB (what EC2's
# DescribeInstanceTypes reports as GpuInfo.Gpus[].MemoryInfo.SizeInMiB).
GPU_MEMORY_LABEL = "eks.amazonaws.com/instance-gpu-memory"

# Karpenter's arithmetic for what a node leaves to pods (aws/karpenter-provider-aws,
# pkg/providers/instancetype/types.go: memory(), kubeReservedResources(), evictionThreshold()):
# the VM's overhead (--vm-memory-overhead-percent, 7.5 % by default), kube-reserved memory of
# 255 MiB plus 11 MiB per pod the node may run, and the kubelet's hard eviction threshold.
VM_MEMORY_OVERHEAD = 0.075
KUBE_RESERVED_BASE_MIB = 255
KUBE_RESERVED_PER_POD_MIB = 11
EVICTION_THRESHOLD_MIB = 100
# Pods per node that kube-reserved is sized for: Kubernetes' default maxPods, which EKS Auto
# Mode's nodes use (they get pod addresses from prefix delegation, not one ENI address per pod).
MAX_PODS = 110


def gpu_memory_needed_mib(model: ModelSettings) -> int:
    """The least memory (MiB) each of a model's GPUs must have: its shard of the weights and the runtime
    reserve must fit within --gpu-memory-utilization of it."""
    per_gpu = model.weights_gb * 1e9 / model.gpus + RUNTIME_RESERVE_BYTES
    return math.ceil(per_gpu / float(model.gpu_memory_utilization) / MIB)


def allocatable_memory_mib(capacity_mib: int, max_pods: int = MAX_PODS) -> int:
    """The memory (MiB) Karpenter counts as allocatable to pods on an instance with `capacity_mib` of memory.

    A 16 GiB instance (g6.xlarge): 16384 - 1229 (7.5 %) - 1465 (255 + 11 x 110) - 100 = 13590 MiB
    (13.3 GiB); a 32 GiB one (g6.2xlarge, g6e.xlarge): 28745 MiB (28.1 GiB).
    """
    overhead = math.ceil(capacity_mib * VM_MEMORY_OVERHEAD)
    kube_reserved = KUBE_RESERVED_BASE_MIB + KUBE_RESERVED_PER_POD_MIB * max_pods
    return capacity_mib - overhead - kube_reserved - EVICTION_THRESHOLD_MIB
