"""`make destroy`: Kubernetes objects that own AWS resources go first, then the stacks; what is kept is listed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from scripts import teardown
from tests.conftest import Assembly

LOAD_BALANCER = {"metadata": {"namespace": "gpt-oss-20b", "name": "public"}, "spec": {"type": "LoadBalancer"}}
CLUSTER_IP = {"metadata": {"namespace": "gpt-oss-20b", "name": "gptoss-service"}, "spec": {"type": "ClusterIP"}}
INGRESS = {"metadata": {"namespace": "gpt-oss-20b", "name": "api"}, "spec": {}}
CLAIM = {"metadata": {"namespace": "gpt-oss-20b", "name": "model-weights"}, "spec": {}}

# A stand-in for aws, kubectl and cdk: logs its arguments, answers `get` with the listed objects.
FAKE = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["CALLS"], "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
objects = json.loads(os.environ["OBJECTS"])
if os.path.basename(sys.argv[0]) == "aws" and os.environ.get("NO_CLUSTER"):
    sys.exit("An error occurred (ResourceNotFoundException): No cluster found")
if "get" in sys.argv:
    kind = sys.argv[sys.argv.index("get") + 1]
    print(json.dumps({"items": objects.get(kind, [])}))
"""


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("aws", "kubectl", "cdk"):
        (tmp_path / name).write_text(FAKE)
        (tmp_path / name).chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CALLS", str(calls))
    monkeypatch.setenv(
        "OBJECTS",
        json.dumps(
            {"services": [LOAD_BALANCER, CLUSTER_IP], "ingresses": [INGRESS], "persistentvolumeclaims": [CLAIM]}
        ),
    )
    return calls


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def what(call: list[str]) -> str:
    """A call without its kubeconfig path: tool, verb, kind and name."""
    words = [word for word in call if not word.startswith("/") and word != "--kubeconfig"]
    return " ".join(words[:4])


def test_objects_that_own_aws_resources_go_before_the_stacks(tools: Path, dev: Assembly) -> None:
    assert teardown.main(["--stage", "dev", "--assembly", str(dev.directory)]) == 0
    order = [what(call) for call in calls(tools)]
    assert order == [
        "aws eks update-kubeconfig --region",
        "kubectl get services --all-namespaces",
        "kubectl delete services public",  # only the LoadBalancer Service; ClusterIP owns nothing in AWS
        "kubectl get ingresses --all-namespaces",
        "kubectl delete ingresses api",
        "kubectl get persistentvolumeclaims --all-namespaces",
        "kubectl delete persistentvolumeclaims model-weights",
        "kubectl delete nodepools.karpenter.sh --all",
        "kubectl delete nodeclaims.karpenter.sh --all",
        "kubectl wait --for=delete nodeclaims.karpenter.sh",
        "kubectl wait --for=delete persistentvolumeclaims",
        "cdk --no-notices destroy --force",
    ]
    # A claim stays while a pod mounts it: it is only marked here, and waited for once the nodes
    # (and so the pods) are gone. Every wait is bounded (kubectl's own default is a week).
    log = calls(tools)
    (claim,) = [
        call
        for call in log
        if call[1:3] == ["delete", "persistentvolumeclaims"]
        or ("persistentvolumeclaims" in call[3:5] and "delete" in call)
    ]
    assert "--wait=false" in claim
    waits = [call for call in log if "wait" in call or "--wait=true" in call]
    assert all(any(word.startswith("--timeout=") for word in call) for call in waits)
    destroy = calls(tools)[-1]
    assert destroy[-1] == "dev/*"


def test_a_cluster_already_gone_skips_to_the_stacks(
    tools: Path, dev: Assembly, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_CLUSTER", "1")
    assert teardown.main(["--stage", "dev", "--assembly", str(dev.directory)]) == 0
    assert [call[0] for call in calls(tools)] == ["aws", "cdk"]


def test_what_the_stage_keeps_is_listed_with_how_to_remove_it(
    tools: Path, dev: Assembly, capsys: pytest.CaptureFixture[str]
) -> None:
    teardown.main(["--stage", "dev", "--assembly", str(dev.directory)])
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
