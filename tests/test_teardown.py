"""`make destroy`: serving stops, the objects that own AWS resources go, then the stage's GPU nodes, then the stacks;
all in one run, against a cluster stand-in whose Karpenter and KEDA behave as their sources show."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from commands import teardown
from settings import load_stage_settings, parse_stage_settings
from settings.drain import termination_grace_seconds
from settings.schema import duration_seconds
from tests.cluster_stand_in import AUTO_MODE_POOLS, Cluster, stage_cluster
from tests.conftest import Assembly, keyed_prod_data


def torn_down(cluster: Cluster, assembly: Assembly, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(teardown.subprocess, "run", cluster)
    return teardown.main(["--stage", assembly.stage, "--assembly", str(assembly.directory)])


def commands(cluster: Cluster) -> list[str]:
    """The commands the teardown ran, without the kubeconfig: tool, verb, kind and name."""
    ran = [line.split("$ ", 1)[1].split() for line in cluster.log if "$ " in line]
    return [
        " ".join([word for word in command if not word.startswith("/") and word != "--kubeconfig"][:4])
        for command in ran
    ]


@pytest.fixture
def prod_cluster() -> Cluster:
    cluster = stage_cluster(load_stage_settings("prod"))
    # What Auto Mode made AWS resources for, besides the stage's own objects.
    cluster.add(
        "services", "public", "gpt-oss-20b", spec={"type": "LoadBalancer"}, finalizers=["service.k8s.aws/resources"]
    )
    cluster.add("ingresses", "api", "gpt-oss-20b", finalizers=["ingress.k8s.aws/resources"])
    return cluster


def test_a_production_stage_is_torn_down_in_one_run(
    prod_cluster: Cluster, prod: Assembly, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prod: two replicas under a PodDisruptionBudget, KEDA's finalizers, two GPU pools.
    assert torn_down(prod_cluster, prod, monkeypatch) == 0, "\n".join(prod_cluster.log)
    assert prod_cluster.objects == []  # `cdk destroy` went through: every chart's objects, then the cluster
    # Well within what the waits allow: no step waited for Karpenter's forced deletion at the pools' grace period.
    assert prod_cluster.now < duration_seconds(load_stage_settings("prod").gpu_node_pools[0].termination_grace_period)


def test_auto_modes_pools_and_keda_outlive_the_gpu_nodes(
    prod_cluster: Cluster, prod: Assembly, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def stand_in(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if command[0] == "cdk":
            seen["pools"] = sorted(pool.name for pool in prod_cluster.live("nodepools"))
            seen["gpu nodes"] = [c.name for c in prod_cluster.live("nodeclaims") if "gpu" in c.name]
            seen["keda"] = prod_cluster.keda_running()
        return prod_cluster(command, **kwargs)

    monkeypatch.setattr(teardown.subprocess, "run", stand_in)
    assert teardown.main(["--stage", "prod", "--assembly", str(prod.directory)]) == 0
    # When the stacks go, only the stage's GPU pools and nodes are gone; KEDA still runs to release its finalizers.
    assert seen == {"pools": sorted(AUTO_MODE_POOLS), "gpu nodes": [], "keda": True}


def test_serving_stops_before_anything_else_goes(
    prod_cluster: Cluster, prod: Assembly, monkeypatch: pytest.MonkeyPatch
) -> None:
    torn_down(prod_cluster, prod, monkeypatch)
    assert commands(prod_cluster) == [
        "aws cloudformation list-stacks --region",  # no model stack outside the app
        "aws eks update-kubeconfig --region",
        # KEDA's objects while its operator runs, then the budget, then the replicas.
        "kubectl delete scaledobjects.keda.sh --all",
        "kubectl delete triggerauthentications.keda.sh --all",
        "kubectl delete poddisruptionbudgets gpt-oss-20b",
        "kubectl get deployments gpt-oss-20b",
        "kubectl scale deployments gpt-oss-20b",
        "kubectl wait --for=delete pods",
        # What Auto Mode made AWS resources for.
        "kubectl get services --all-namespaces",
        "kubectl delete services public",  # only the LoadBalancer Service; ClusterIP owns nothing in AWS
        "kubectl get ingresses --all-namespaces",
        "kubectl delete ingresses api",
        "kubectl get persistentvolumeclaims --all-namespaces",
        "kubectl delete persistentvolumeclaims model-weights",
        # The stage's own GPU pools, by name, and their nodes.
        "kubectl delete nodepools.karpenter.sh gpu-node-pool",
        "kubectl delete nodeclaims.karpenter.sh -l",
        "kubectl wait --for=delete nodeclaims.karpenter.sh",
        "kubectl delete nodeclasses.eks.amazonaws.com gpu-node-pool",
        "kubectl wait --for=delete persistentvolumeclaims",
        "cdk --no-notices destroy --force",
    ]
    ran = [line.split("$ ", 1)[1] for line in prod_cluster.log if "$ " in line]
    assert "nodepools.karpenter.sh gpu-node-pool gpu-fallback-g5 " in next(c for c in ran if "delete nodepools" in c)


def test_every_wait_is_bounded_by_the_settings_that_bound_it(
    prod_cluster: Cluster, prod: Assembly, monkeypatch: pytest.MonkeyPatch
) -> None:
    torn_down(prod_cluster, prod, monkeypatch)
    ran = [line.split("$ ", 1)[1].split() for line in prod_cluster.log if "$ " in line]
    waits = [command for command in ran if "wait" in command or "--wait=true" in command]
    assert waits
    assert all(any(word.startswith("--timeout=") for word in command) for command in waits)
    settings = load_stage_settings("prod")
    (pods,) = [command for command in ran if "pods" in command and "wait" in command]
    # A replica drains within its grace period; the pod object goes a minute later at the most.
    assert f"--timeout={termination_grace_seconds(settings.models[0]) + 60}s" in pods
    (nodes,) = [command for command in ran if "wait" in command and "nodeclaims.karpenter.sh" in command]
    node_grace = max(duration_seconds(pool.termination_grace_period) for pool in settings.gpu_node_pools)
    assert f"--timeout={node_grace + teardown.INSTANCE_TERMINATION_SECONDS}s" in nodes


def test_a_cluster_already_gone_skips_to_the_stacks(dev: Assembly, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = Cluster()
    cluster.reachable = False
    assert torn_down(cluster, dev, monkeypatch) == 0
    assert [" ".join(command.split()[:2]) for command in commands(cluster)] == [
        "aws cloudformation",
        "aws eks",
        "cdk --no-notices",
    ]


def test_what_the_stage_keeps_is_listed_with_how_to_remove_it(
    dev: Assembly, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    torn_down(stage_cluster(load_stage_settings("dev")), dev, monkeypatch)
    out = capsys.readouterr().out
    kept = list(teardown.kept(dev.directory))
    kinds = {item.kind for item in kept}
    assert {"AWS::S3::Bucket", "AWS::KMS::Key", "AWS::Logs::LogGroup", "Custom::LogRetention"} <= kinds
    assert "aws logs delete-log-group --log-group-name /aws/eks/gpu-inference-dev/cluster" in out
    assert "aws s3 rb s3://<bucket> --force" in out
    assert "ecr-public/dev/" in out
    # Nothing the stacks delete themselves is listed.
    assert "AWS::FSx::FileSystem" not in kinds
    assert "AWS::EKS::Cluster" not in kinds


# --- the stand-in behaves as Karpenter, KEDA and the kubectl handler do ---


def test_the_stand_in_holds_a_second_replica_until_karpenters_termination_time() -> None:
    # Today's order (every pool deleted while the replicas serve) on prod: the budget refuses the second replica's
    # eviction, its replacement can never start, so Karpenter deletes it only at the pool's termination time minus the
    # pod's grace: 3600 - 1040 s, longer than a 15-minute wait.
    settings = load_stage_settings("prod")
    cluster = stage_cluster(settings)
    assert (
        cluster(["kubectl", "delete", "nodepools.karpenter.sh", "--all", "--wait=true", "--timeout=15m"]).returncode
        == 0
    )
    waited = cluster(["kubectl", "wait", "--for=delete", "nodeclaims.karpenter.sh", "--all", "--timeout=15m"])
    assert waited.returncode == 1
    cluster(["kubectl", "wait", "--for=delete", "nodeclaims.karpenter.sh", "--all", "--timeout=2h"])
    forced = [line for line in cluster.log if "Karpenter deletes" in line]
    grace = duration_seconds(settings.gpu_node_pools[0].termination_grace_period)
    assert forced
    assert float(forced[0].split()[0]) >= grace - termination_grace_seconds(settings.models[0])


def test_the_stand_in_keeps_kedas_finalizers_once_its_pool_is_gone() -> None:
    # With Auto Mode's pools deleted too, KEDA's operator stops and nothing removes finalizer.keda.sh: the model's
    # namespace never finishes and the Serving stack's deletion fails.
    cluster = stage_cluster(load_stage_settings("prod"))
    cluster(["kubectl", "delete", "nodepools.karpenter.sh", "--all", "--wait=true", "--timeout=15m"])
    cluster(["kubectl", "wait", "--for=delete", "nodeclaims.karpenter.sh", "--all", "--timeout=2h"])
    assert not cluster.keda_running()
    destroyed = cluster(["cdk", "destroy"])
    assert destroyed.returncode == 1
    assert "namespace gpt-oss-20b still holds" in destroyed.stderr
    assert "finalizer.keda.sh" in destroyed.stderr


def test_a_model_the_settings_no_longer_name_is_stopped_and_its_stack_deleted_first(
    prod: Assembly, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pipeline deployed a second model, then the settings dropped it: its stack and its replicas are still there.
    data = keyed_prod_data()
    data["models"].append({**data["models"][0], "name": "retired", "service_name": "retired"})
    cluster = stage_cluster(parse_stage_settings("prod", data))
    cluster.stacks = ["prod-Model-retired"]
    assert torn_down(cluster, prod, monkeypatch) == 0, "\n".join(cluster.log)
    assert cluster.objects == []
    assert cluster.stacks == []
    ran = commands(cluster)
    # Its serving stops with the others', while KEDA and the pools run; its stack goes before the stage's.
    assert "kubectl scale deployments retired" in ran
    assert ran.index("kubectl scale deployments retired") < ran.index(
        "kubectl delete nodepools.karpenter.sh gpu-node-pool"
    )
    assert ran.index("aws cloudformation delete-stack --region") < ran.index("cdk --no-notices destroy --force")
