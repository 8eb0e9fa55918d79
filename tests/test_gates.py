"""Quality gates: every check a reviewer would run, on every stage, each proven able to fail.

cdk-nag runs inside every synth (app.py), so the session's synthesized stages have passed it;
the tests here read its report and show that an unacknowledged finding does stop a synth.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from cdk_nag import AwsSolutionsChecks

from app import project_app
from charts.gateway import KEY_SYNC_CHECKOV_EXCEPTIONS
from charts.gateway_model import PICKER_CHECKOV_EXCEPTIONS
from charts.node_rotation import ROTATION_CHECKOV_EXCEPTIONS
from charts.pod_security import POD_SECURITY_LABELS
from charts.vllm_server import CHECKOV_EXCEPTIONS
from settings import load_pipeline_settings, load_stage_settings, stage_names
from stacks.reviewed_findings import (
    CHECKOV_FINDINGS,
    OBSERVABILITY_CHECKOV_FINDINGS,
    PIPELINE_CHECKOV_FINDINGS,
    nag_findings,
)
from tests.conftest import (
    PIPELINE,
    ROOT,
    SCENARIOS,
    Assembly,
    Scans,
    Scenario,
    find,
    find_all,
    gpu_pool_objects,
    render_charts,
    start_in_background,
    validation_findings,
)
from tests.scanners import (
    CFN_LINT,
    CHECKOV,
    checkov_failures,
    checkov_skips,
    is_config_map_key,
    is_dns1035_label,
    is_dns1123_label,
    is_dns1123_subdomain,
    is_port_name,
    is_qualified_name,
    karpenter_problems,
    kubernetes_problems,
)


@pytest.fixture(scope="session")
def checkov_reports(scans: Future[Scans]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """checkov's reports on each input: the manifests, the templates of the stages and of the
    pipeline, and a broken one of each (tests/conftest.py runs the scan in the background)."""
    done = scans.result()
    return {
        "kubernetes": done.checkov_on("kubernetes", *stage_names()),
        "broken-kubernetes": done.checkov_on("kubernetes", "broken"),
        "cloudformation": done.checkov_on("cloudformation", *stage_names()),
        "pipeline": done.checkov_on("cloudformation", PIPELINE),
        "broken-cloudformation": done.checkov_on("cloudformation", "broken"),
    }


# --- the scanners' processes ---


@pytest.mark.parametrize("scanner", [CHECKOV, CFN_LINT], ids=["checkov", "cfn-lint"])
def test_the_scanners_python_makes_full_collections_rarely_in_the_background_only(
    scanner: Path, tmp_path: Path
) -> None:
    python = str(scanner.parent / "python")  # the interpreter of the scanner's own environment
    # A sitecustomize of the machine's, which the suite's comes before on the path: it still runs.
    (tmp_path / "sitecustomize.py").write_text('print("the machine sitecustomize ran")\n')
    thresholds = ["-c", "import gc; print(gc.get_threshold())"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    assert start_in_background([python, *thresholds], env=env).communicate(timeout=60) == (
        "the machine sitecustomize ran\n(700, 10, 1000)\n",
        "",
    )
    as_a_user_runs_it = subprocess.run([python, *thresholds], env=env, capture_output=True, text=True, check=True)
    assert as_a_user_runs_it.stdout.startswith("the machine sitecustomize ran\n")
    assert "(700, 10, 1000)" not in as_a_user_runs_it.stdout


# --- cdk-nag (AwsSolutions) ---


def test_every_stage_passes_cdk_nag_with_no_unacknowledged_finding(assemblies: dict[str, Assembly]) -> None:
    for assembly in assemblies.values():
        findings, _ = validation_findings(assembly.directory.parent / "validation-report.json")
        assert findings == [], json.dumps(findings, indent=2)


def test_a_stage_no_person_can_reach_is_warned_of_at_synth(dev: Assembly, prod: Assembly) -> None:
    # dev as shipped names no admin and exposes no model; prod says it is operated by its pipeline alone. prod's
    # gateway pulls its images from Docker Hub, as prod signs in to no Docker Hub account, and its model's image has
    # no digest until `make pin-images` reads one. Both serve a vLLM no published advisory affects.
    warnings = sorted(validation_findings(dev.directory.parent / "validation-report.json")[1])
    assert warnings == ["unreachable-cluster"]
    assert "cluster.admin_principal_arns: no person could reach the cluster" in dev.stderr
    assert validation_findings(prod.directory.parent / "validation-report.json") == (
        [],
        ["gateway-images-uncached", "image-unpinned"],
    )
    assert "registry.docker_hub_credential_arn to pull them through the stage's cache" in prod.stderr
    assert "is pinned by its tag alone, which its publisher may move: `make pin-images STAGE=prod`" in prod.stderr


def test_a_model_on_a_version_advisories_affect_is_warned_of_at_synth(
    keyed_model_serving: Scenario, gated_model_serving: Scenario
) -> None:
    # The scenario's second model pins the walkthrough's vLLM 0.11.2; its first serves dev's image.
    (warning,) = keyed_model_serving.warnings
    assert warning.startswith("keyed: vLLM 0.11.2 (")
    assert "PYSEC-2026-2298" in warning
    assert warning.endswith("[ack: gpu-inference:vllm-advisories]")
    assert gated_model_serving.warnings == []


def test_cdk_nag_stops_a_synth_on_an_unacknowledged_finding(tmp_path: Path) -> None:
    app = project_app(outdir=str(tmp_path))
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    stack = cdk.Stack(app, "Broken")
    vpc = ec2.Vpc.from_vpc_attributes(stack, "Vpc", vpc_id="vpc-0123456789abcdef0", availability_zones=["us-west-2a"])
    ec2.SecurityGroup(stack, "Open", vpc=vpc).add_ingress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(22))
    with pytest.raises(RuntimeError, match="ValidationFailed") as stopped:
        app.synth()
    # What app.py prints when a synth stops: the resource, the rule and how to acknowledge it.
    message = str(stopped.value)
    assert "Broken/Open/Resource" in message
    assert "Acknowledge with 'AwsSolutions::AwsSolutions-EC23'" in message


@pytest.mark.parametrize("stage", stage_names())
def test_every_acknowledgment_gives_a_reason(stage: str) -> None:
    findings = nag_findings(load_stage_settings(stage), f"{stage}-ModelStore", lambda path: f"<{path}>")
    for finding in (*findings, *CHECKOV_FINDINGS, *OBSERVABILITY_CHECKOV_FINDINGS, *PIPELINE_CHECKOV_FINDINGS):
        assert len(finding.reason) > 40, finding
    rules = [(finding.path, finding.rule) for finding in findings]
    assert len(rules) == len(set(rules))
    # Acknowledged one rule at a time: never a whole pack, never a bare rule that reports per finding.
    assert all(f.rule.startswith("AwsSolutions-") for f in findings)
    assert all("[" in f.rule for f in findings if f.rule.startswith(("AwsSolutions-IAM4", "AwsSolutions-IAM5")))


# --- cfn-lint ---


def test_every_template_passes_cfn_lint(scans: Future[Scans]) -> None:
    done = scans.result()
    # Each stage's five stacks and one per model.
    stacks = {stage: 5 + len(load_stage_settings(stage).models) for stage in stage_names()}
    assert {stage: len(done.linted[stage]) for stage in stage_names()} == stacks
    # The pipeline's own stack, and those of each stage it deploys (settings/pipeline.yaml).
    assert len(done.linted[PIPELINE]) == 1 + sum(stacks[stage] for stage in load_pipeline_settings()[1])
    assert len(done.linted[SCENARIOS]) == 2  # the admins cluster and the gated model's stack
    assert done.cfn_lint == []


def test_cfn_lint_rejects_a_broken_template(scans: Future[Scans]) -> None:
    (finding,) = scans.result().cfn_lint_broken
    assert finding.startswith("Error E3002 at Resources/Bucket/Properties/BucketNam in broken.template.json")


# --- Kubernetes and Karpenter schemas ---


@pytest.mark.parametrize(
    ("check", "good", "bad"),
    [
        (is_dns1123_label, ["gpu-metrics", "a1"], ["GPU", "-a", "a-", "a.b", "a" * 64]),
        (is_dns1035_label, ["gptoss-service", "a", "a" * 63], ["20b-gptoss", "-a", "a-", "a.b", "a" * 64]),
        (is_dns1123_subdomain, ["gpu-metrics", "a.b-c"], ["a..b", "A.b", "a_b", "a" * 254]),
        (
            is_qualified_name,
            ["gpu-metrics/script-sha256", "app", "a.io/B_c.d"],
            ["/a", "a/-b", "a/b/c", "a/" + "b" * 64],
        ),
        (is_port_name, ["gpu-metrics", "http"], ["gpu-metrics-port", "9400", "a--b", "-ab", "Gpu"]),
        (is_config_map_key, ["gpu_metrics.py", "a-b.c"], [".", "..", "a/b", "a b"]),
    ],
)
def test_kubernetes_name_rules_admit_and_refuse_as_apimachinery_does(
    check: Callable[[str], bool], good: list[str], bad: list[str]
) -> None:
    assert all(check(name) for name in good)
    assert not any(check(name) for name in bad)


@pytest.mark.parametrize("stage", stage_names())
def test_every_object_matches_the_clusters_kubernetes_schema(stage: str) -> None:
    version = load_stage_settings(stage).cluster.kubernetes_version
    # NodePool and NodeClass are custom resources: the Karpenter schema and
    # tests/test_gpu_node_pool_chart.py check them; KEDA's schema checks ScaledObject and
    # TriggerAuthentication (tests/test_autoscaling.py), the CSI driver's SecretProviderClass
    # (tests/test_api_keys.py).
    # The gateway's kinds: tests/test_gateway.py (schemas) and tests/test_crd_cel.py (CEL rules).
    gateway = (
        "gateway.networking.k8s.io/v1",
        "gateway.envoyproxy.io/v1alpha1",
        "aigateway.envoyproxy.io/v1beta1",
        "inference.networking.k8s.io/v1",
    )
    custom = ("karpenter.sh/v1", "eks.amazonaws.com/v1", "keda.sh/v1alpha1", "secrets-store.csi.x-k8s.io/v1", *gateway)
    objects = [obj for objects in render_charts(stage).values() for obj in objects if obj["apiVersion"] not in custom]
    # Every other object (tests/test_vllm_server_chart.py lists them) is a core Kubernetes kind.
    settings = load_stage_settings(stage)
    scaled = [model for model in settings.models if model.autoscaling is not None]
    keyed = [model for model in settings.models if model.api_keys_secret]
    customs = 2 * len(settings.gpu_node_pools) + 2 * len(scaled) + len(keyed)
    if settings.gateway is not None:
        # GatewayClass, EnvoyProxy, GatewayConfig, Gateway, SecurityPolicy, ClientTrafficPolicy, the key sync's
        # SecretProviderClass, the quotas' policy; each model's route and pool; the load balancer's IngressClassParams.
        customs += 7 + bool(settings.gateway.quotas) + 2 * len(settings.models) + bool(settings.gateway.endpoint)
    assert len(objects) == sum(len(objs) for objs in render_charts(stage).values()) - customs
    assert [problem for obj in objects for problem in kubernetes_problems(obj, version)] == []
    # The schema does not carry the name rules; a Service's name is a DNS-1035 label (ValidateServiceName).
    services = [obj["metadata"]["name"] for obj in objects if obj["kind"] == "Service"]
    assert services
    assert all(map(is_dns1035_label, services))


def broken_deployment(change: str) -> dict[str, Any]:
    deployment = copy.deepcopy(find(render_charts("dev")["Model-gpt-oss-20b"], "Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    if change == "unknown field":
        container["resource"] = container.pop("resources")
    else:  # wrong type
        deployment["spec"]["replicas"] = "two"
    return deployment


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("unknown field", "Additional properties are not allowed ('resource' was unexpected)"),
        ("wrong type", "'two' is not of type 'integer'"),
    ],
)
def test_kubernetes_schema_rejects_a_broken_deployment(change: str, message: str) -> None:
    (problem,) = kubernetes_problems(broken_deployment(change), "1.36")
    assert problem.startswith("Deployment gpt-oss-20b: ")
    assert message in problem


def test_every_node_pool_matches_the_karpenter_schema() -> None:
    pools = [pool for stage in stage_names() for pool in find_all(gpu_pool_objects(render_charts(stage)), "NodePool")]
    assert len(pools) == sum(len(load_stage_settings(stage).gpu_node_pools) for stage in stage_names())
    assert karpenter_problems(pools) == []


def test_karpenter_schema_rejects_broken_node_pools() -> None:
    pool = find(gpu_pool_objects(render_charts("dev")), "NodePool")
    bad_operator, bad_duration, no_node_class, wrong_type = (copy.deepcopy(pool) for _ in range(4))
    bad_operator["spec"]["template"]["spec"]["requirements"][0]["operator"] = "Within"
    bad_duration["spec"]["disruption"]["consolidateAfter"] = "ten minutes"
    del no_node_class["spec"]["template"]["spec"]["nodeClassRef"]
    wrong_type["spec"]["template"]["spec"]["taints"] = "nvidia.com/gpu"
    problems = karpenter_problems([bad_operator, bad_duration, no_node_class, wrong_type])
    assert len(problems) == 4
    assert "requirements/0/operator must be equal to one of the allowed values" in problems[0]
    assert "consolidateAfter must match pattern" in problems[1]
    assert "must have required property nodeClassRef" in problems[2]
    assert "taints must be array" in problems[3]


# --- Pod security and checkov ---


def test_inference_namespace_enforces_the_restricted_pod_security_standard() -> None:
    for stage in stage_names():
        for chart_id, objects in render_charts(stage).items():
            if chart_id.startswith("Model-") or chart_id == "Gateway":
                labels = find(objects, "Namespace")["metadata"]["labels"]
                assert labels.items() >= POD_SECURITY_LABELS.items()
                assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_manifests_pass_checkov_kubernetes_checks(checkov_reports: dict[str, Any]) -> None:
    results = checkov_reports["kubernetes"]
    how = "add a checkov.io/skip annotation with the reason to CHECKOV_EXCEPTIONS in charts/vllm_server.py"
    assert checkov_failures(results, how) == []
    assert len(results["passed_checks"]) > 50
    assert checkov_skips(results) == set(CHECKOV_EXCEPTIONS.items()) | set(ROTATION_CHECKOV_EXCEPTIONS.items()) | set(
        PICKER_CHECKOV_EXCEPTIONS.items()
    ) | set(KEY_SYNC_CHECKOV_EXCEPTIONS.items())


def test_checkov_kubernetes_checks_reject_a_privileged_pod(checkov_reports: dict[str, Any]) -> None:
    failed = {check["check_id"] for check in checkov_reports["broken-kubernetes"]["failed_checks"]}
    assert {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_28"} <= failed  # privileged, escalation, capabilities


def test_templates_pass_checkov_cloudformation_checks(checkov_reports: dict[str, Any]) -> None:
    results = checkov_reports["cloudformation"]
    how = "acknowledge it in CHECKOV_FINDINGS in stacks/reviewed_findings.py with the reason"
    assert checkov_failures(results, how) == []
    assert len(results["passed_checks"]) > 100
    accepted = (*CHECKOV_FINDINGS, *OBSERVABILITY_CHECKOV_FINDINGS)  # the latter for prod's data source
    assert checkov_skips(results) == {(finding.rule, finding.reason) for finding in accepted}


def test_pipeline_templates_pass_checkov_cloudformation_checks(checkov_reports: dict[str, Any]) -> None:
    results = checkov_reports["pipeline"]
    how = "acknowledge it in stacks/reviewed_findings.py with the reason"
    assert checkov_failures(results, how) == []
    accepted = {
        (finding.rule, finding.reason)
        for finding in (*CHECKOV_FINDINGS, *OBSERVABILITY_CHECKOV_FINDINGS, *PIPELINE_CHECKOV_FINDINGS)
    }
    assert checkov_skips(results) == accepted


def test_checkov_cloudformation_checks_reject_an_unencrypted_bucket(checkov_reports: dict[str, Any]) -> None:
    failed = {check["check_id"] for check in checkov_reports["broken-cloudformation"]["failed_checks"]}
    assert {"CKV_AWS_18", "CKV_AWS_21", "CKV_AWS_66"} <= failed  # bucket logging, versioning; log retention


# --- Template security, asserted directly ---


def all_resources(assemblies: dict[str, Assembly], kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{assembly.stage}/{stack}/{logical_id}", resource)
        for assembly in assemblies.values()
        for stack in assembly.stacks()
        for logical_id, resource in assembly.template(stack)["Resources"].items()
        if resource["Type"] == kind
    ]


def test_every_kms_key_rotates_and_is_retained(assemblies: dict[str, Assembly]) -> None:
    keys = all_resources(assemblies, "AWS::KMS::Key")
    # cluster secrets, flow logs, file system, smoke test artifacts; prod's data source logs
    assert len(keys) == 4 * len(assemblies) + 1
    for where, key in keys:
        assert key["Properties"]["EnableKeyRotation"] is True, where
        assert key["DeletionPolicy"] == "Retain", where


def test_every_log_group_has_a_retention_and_is_retained(assemblies: dict[str, Assembly]) -> None:
    for where, group in all_resources(assemblies, "AWS::Logs::LogGroup"):
        assert group["Properties"]["RetentionInDays"] > 0, where
        assert group["DeletionPolicy"] == "Retain", where


def test_our_log_groups_are_encrypted_with_our_keys(assemblies: dict[str, Assembly]) -> None:
    # The flow logs' group, and prod's data source's. The control plane's group is EKS's, adopted by
    # LogRetention, which cannot give it a key (tests/test_destroy_and_redeploy.py): CloudWatch Logs
    # encrypts it; so is Container Insights' group, which its agent names.
    ours = [
        (where, group)
        for where, group in all_resources(assemblies, "AWS::Logs::LogGroup")
        if "/aws/lambda/" not in json.dumps(group["Properties"].get("LogGroupName", ""))
    ]
    assert len(ours) == 1 * len(assemblies) + 1
    for where, group in ours:
        assert "KmsKeyId" in group["Properties"], where


def test_the_type_checker_refuses_a_value_of_the_wrong_type(tmp_path: Path) -> None:
    # `make lint` runs mypy on the project with pyproject.toml's settings; the same settings on a planted error.
    from mypy import api

    broken = tmp_path / "broken.py"
    broken.write_text('ADDON = "aws-secrets-store-csi-driver-provider"\n\nlimit: int = ADDON\n')
    stdout, _, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--no-incremental", str(broken)])
    assert status == 1
    assert 'Incompatible types in assignment (expression has type "str", variable has type "int")' in stdout


def metadata_of(obj: Any) -> Any:
    """Every metadata mapping in an object: its own, and those of the templates it holds (a pod's, a Job's)."""
    if isinstance(obj, dict):
        if isinstance(obj.get("metadata"), dict):
            yield obj["metadata"]
        for value in obj.values():
            yield from metadata_of(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from metadata_of(value)


@pytest.mark.parametrize("stage", stage_names())
def test_every_label_and_annotation_key_is_one_the_api_server_takes(stage: str) -> None:
    # The API server validates label and annotation keys as qualified names (kubernetes apimachinery,
    # pkg/api/validation/objectmeta.go ValidateAnnotations, and pkg/apis/meta/v1/validation ValidateLabels):
    # the schema checks above take any string, so a key the server refuses would pass them.
    keys = {
        key
        for objects in render_charts(stage).values()
        for metadata in metadata_of(objects)
        for key in (*metadata.get("labels", {}), *metadata.get("annotations", {}))
    }
    assert keys, "the charts have labels and annotations"
    assert sorted(key for key in keys if not is_qualified_name(key)) == []


# EC2 takes these in a security group rule's description (EC2 API Reference, IpRange and UserIdGroupPair:
# "a-z, A-Z, 0-9, spaces, and ._-:/()#,@[]+=&;{}!$*"); anything else fails the deploy, which cfn-lint does not catch.
RULE_DESCRIPTION = re.compile(r"^[a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*]*$")


def test_every_security_group_rule_description_is_one_ec2_takes(assemblies: dict[str, Assembly]) -> None:
    descriptions = []
    for assembly in assemblies.values():
        for template in assembly.directory.glob("*.template.json"):
            for resource in json.loads(template.read_text())["Resources"].values():
                props = resource.get("Properties", {})
                if resource["Type"] in ("AWS::EC2::SecurityGroupIngress", "AWS::EC2::SecurityGroupEgress"):
                    descriptions.append(props.get("Description", ""))
                if resource["Type"] == "AWS::EC2::SecurityGroup":
                    rules = [*props.get("SecurityGroupIngress", []), *props.get("SecurityGroupEgress", [])]
                    descriptions += [rule.get("Description", "") for rule in rules]
    assert len(descriptions) > 10
    assert [d for d in descriptions if isinstance(d, str) and not RULE_DESCRIPTION.match(d)] == []
    assert not RULE_DESCRIPTION.match("Lustre from the cluster's nodes")
