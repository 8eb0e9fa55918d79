"""`make plan`: what a settings change does to a running stage, said before the deploy. A table of day-2 changes,
each rendered before and after."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from commands import plan as make_plan
from settings import SettingsError, parse_stage_settings
from settings.names import SECRETS_STORE_ADDON
from tests.conftest import Assembly, charts_of, keyed_prod_data, stage_data

CERTIFICATE = "arn:aws:acm:us-west-2:123456789012:certificate/0a1b2c3d-0000-4000-8000-000000000000"


def serving_of(data: dict[str, Any]) -> dict[str, Any]:
    """A Serving template as the stack would hold prod's charts (each a manifest resource)."""
    return {
        "Resources": {
            chart_id: {"Type": make_plan.MANIFEST_TYPE, "Properties": {"Manifest": json.dumps(objects)}}
            for chart_id, objects in charts_of(data).items()
        }
    }


def planned(change: Callable[[dict[str, Any]], Any]) -> make_plan.Plan:
    before = keyed_prod_data()
    after = copy.deepcopy(before)
    change(after)
    return make_plan.plan({"Serving": serving_of(before)}, {"Serving": serving_of(after)})


def model(data: dict[str, Any]) -> dict[str, Any]:
    return data["models"][0]


def second_model(data: dict[str, Any]) -> None:
    data["models"].append({**model(data), "name": "gpt-oss-b", "service_name": "gpt-oss-b"})


DAY_TWO: dict[str, tuple[Callable[[dict[str, Any]], Any], list[str], list[str]]] = {
    # change: (what it does, what the plan must say, what it must not say)
    "a new revision": (
        lambda data: model(data).update(revision="a" * 40),
        ["model gpt-oss-20b: its replicas roll", "Job gpt-oss-20b/import-gpt-oss-20b-"],
        ["drifts", "REFUSED"],
    ),
    "a new image": (
        lambda data: model(data).update(image="public.ecr.aws/deep-learning-containers/vllm:0.11.2-gpu-py312-ec2"),
        ["model gpt-oss-20b: its replicas roll"],
        ["drifts", "REFUSED"],
    ),
    "a longer context": (
        lambda data: model(data).update(max_model_len=30000),
        ["model gpt-oss-20b: its replicas roll"],
        ["drifts", "REFUSED"],  # a model's settings never reach a pool's hashed template
    ),
    "a bigger file system": (
        lambda data: data.update(model_store={"storage_capacity_gib": 2400}),
        [],
        ["REFUSED", "drifts"],  # the claim's request stays: no immutable field changes
    ),
    "a pool's disk": (
        lambda data: data["gpu_node_pools"][0].update(disk={"size": "300Gi", "iops": 10000, "throughput_mib": 1000}),
        ["GPU pool gpu-node-pool: its NodeClass changes, so every node of it drifts"],
        ["gpu-fallback-g5: its", "REFUSED"],
    ),
    "a new pool": (
        lambda data: data["gpu_node_pools"].append(
            {**data["gpu_node_pools"][1], "name": "gpu-g6e", "instance_families": ["g6e"]}
        ),
        [],
        ["drifts", "REFUSED", "removed"],
    ),
    "a model added": (second_model, [], ["REFUSED", "removed"]),
    "another key secret": (
        lambda data: model(data).update(api_keys_secret="gpt-oss-20b/keys-2"),
        ["model gpt-oss-20b: its replicas roll"],  # the secret's name is in the pod template's annotations
        ["drifts", "REFUSED", "removed"],
    ),
    "another service name": (
        lambda data: model(data).update(service_name="gpt-oss"),
        [
            "Service gpt-oss-20b/gptoss-service is removed from the cluster",
            "in-cluster clients of gptoss-service.gpt-oss-20b.svc lose it",
        ],
        ["drifts", "REFUSED", "roll"],
    ),
    "autoscaling off": (
        lambda data: model(data).pop("autoscaling"),
        ["ScaledObject gpt-oss-20b/gpt-oss-20b is removed", "TriggerAuthentication gpt-oss-20b/amp-queries is removed"],
        ["REFUSED"],
    ),
    "exposure on": (
        lambda data: model(data).update(
            exposure={"hostname": "llm.internal.example.com", "certificate_arn": CERTIFICATE}
        ),
        ["model gpt-oss-20b: its replicas roll"],  # the preStop waits for the load balancer now
        ["drifts", "REFUSED"],  # the NodeClasses carry networkPolicy already
    ),
}


@pytest.mark.parametrize("change", sorted(DAY_TWO))
def test_the_plan_of_a_day_two_change_says_what_it_does(change: str) -> None:
    apply, said, unsaid = DAY_TWO[change]
    lines = "\n".join(planned(apply).lines)
    for phrase in said:
        assert phrase in lines, (change, lines)
    for phrase in unsaid:
        assert phrase not in lines, (change, lines)


def test_a_removed_model_and_its_namespace_are_said() -> None:
    before = keyed_prod_data()
    second_model(before)
    result = make_plan.plan({"Serving": serving_of(before)}, {"Serving": serving_of(keyed_prod_data())})
    assert "Kubernetes: Namespace gpt-oss-b is removed from the cluster" in result.lines


def test_a_job_changed_under_its_name_is_refused() -> None:
    # What a Job named after settings rather than its spec did: the deploy would fail on the immutable template.
    before = serving_of(keyed_prod_data())
    after = copy.deepcopy(before)
    objects = json.loads(after["Resources"]["Model-gpt-oss-20b"]["Properties"]["Manifest"])
    job = next(obj for obj in objects if obj["kind"] == "Job")
    job["spec"]["template"]["spec"]["containers"][0]["image"] = "another"
    after["Resources"]["Model-gpt-oss-20b"]["Properties"]["Manifest"] = json.dumps(objects)
    result = make_plan.plan({"Serving": before}, {"Serving": after})
    assert result.refusals == [
        f"Kubernetes: Job gpt-oss-20b/{job['metadata']['name']} changes its spec under the same name; a Job's template "
        "is immutable"
    ]


def test_a_stateful_replacement_is_refused_and_a_throughput_change_is_not(dev: Assembly) -> None:
    before = {"ModelStore": dev.template("ModelStore")}
    after = copy.deepcopy(before)
    (file_system,) = [r for r in after["ModelStore"]["Resources"].values() if r["Type"] == "AWS::FSx::FileSystem"]
    file_system["Properties"]["LustreConfiguration"]["PerUnitStorageThroughput"] = 500
    assert make_plan.plan(before, after).refusals == []
    file_system["Properties"]["SubnetIds"] = ["subnet-0123"]
    (refusal,) = make_plan.plan(before, after).refusals
    assert "AWS::FSx::FileSystem" in refusal
    assert "is replaced (SubnetIds changes), and with it the file system" in refusal


def test_the_deployed_stage_against_itself_plans_nothing(dev: Assembly) -> None:
    templates = make_plan.assembly_templates(dev.directory)
    assert set(templates) == {*make_plan.STACKS, "Model-gpt-oss-20b"}
    assert make_plan.plan(templates, templates).lines == ["nothing changes"]
    first = make_plan.plan({}, templates)
    assert first.lines == [f"stack {stack} is created" for stack in sorted(templates)]


def test_the_command_says_when_there_is_nothing_to_compare_with(
    dev: Assembly, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert make_plan.main(["--stage", "dev", "--before", str(tmp_path), "--after", str(dev.directory)]) == 2
    assert "holds no cloud assembly (`make deploy` saves one after each success" in capsys.readouterr().err
    # Before a first deploy (`make deploy`'s gate) nothing to compare with is no reason to stop.
    assert make_plan.main(["--stage", "dev", "--before", str(tmp_path), "--after", str(dev.directory), "--gate"]) == 0
    saved = tmp_path / "deployed"
    make_plan.save_deployed("dev", dev.directory, root=saved)
    assert make_plan.main(["--stage", "dev", "--before", str(saved / "dev"), "--after", str(dev.directory)]) == 0
    assert "- nothing changes" in capsys.readouterr().out


def test_a_renamed_model_is_said_with_the_way_to_rename_it_without_an_outage() -> None:
    lines = "\n".join(planned(lambda data: model(data).update(name="gpt-oss")).lines)
    assert "model gpt-oss-20b is renamed gpt-oss: gpt-oss-20b stops serving openai/gpt-oss-20b" in lines
    assert "add gpt-oss beside gpt-oss-20b, deploy, wait until it serves, then remove gpt-oss-20b" in lines
    assert "Namespace gpt-oss-20b is removed from the cluster" in lines


def test_another_repository_into_the_same_weights_folder_is_refused() -> None:
    # The same name and revision give the same folder: the import would mix two models' files.
    result = planned(lambda data: model(data).update(model="Qwen/Qwen3-8B", max_model_len=8192))
    (refusal,) = result.refusals
    assert refusal.startswith("model gpt-oss-20b: Qwen/Qwen3-8B would be imported into gpt-oss-20b/d666cf3b")
    assert "which holds openai/gpt-oss-20b's weights" in refusal
    # With a revision of its own it has a folder of its own.
    moved = planned(lambda data: model(data).update(model="Qwen/Qwen3-8B", max_model_len=8192, revision="b" * 40))
    assert moved.refusals == []


@pytest.mark.parametrize(
    ("before", "after", "problem"),
    [
        ("1.35", "1.36", None),
        ("1.35", "1.35", None),
        ("1.34", "1.36", "Kubernetes 1.34 would skip to 1.36: EKS upgrades one minor version at a time"),
        ("1.36", "1.35", "Kubernetes 1.36 would go down to 1.35: EKS never downgrades a cluster"),
    ],
)
def test_kubernetes_moves_one_minor_version_up_at_a_time(before: str, after: str, problem: str | None) -> None:
    assert make_plan.kubernetes_version_problem(before, after) == problem


def test_a_kubernetes_upgrade_points_at_its_runbook_and_a_skip_is_refused(dev: Assembly) -> None:
    before = {"Cluster": dev.template("Cluster")}
    (cluster,) = [r for r in before["Cluster"]["Resources"].values() if r["Type"] == "AWS::EKS::Cluster"]
    version = cluster["Properties"]["Version"]
    major, minor = map(int, version.split("."))
    for step, expected in (
        (1, 'see docs/operations.md, "Upgrading Kubernetes"'),
        (2, "EKS upgrades one minor version"),
    ):
        after = copy.deepcopy(before)
        (upgraded,) = [r for r in after["Cluster"]["Resources"].values() if r["Type"] == "AWS::EKS::Cluster"]
        upgraded["Properties"]["Version"] = f"{major}.{minor + step}"
        assert expected in "\n".join(make_plan.plan(before, after).lines)
    assert make_plan.plan(before, after).refusals


def without_keys(data: dict[str, Any]) -> None:
    del model(data)["api_keys_secret"]


def test_the_key_driver_going_before_the_replicas_that_mount_it_is_refused(prod: Assembly) -> None:
    cluster = prod.template("Cluster")
    (addon_id,) = [
        logical_id
        for logical_id, resource in cluster["Resources"].items()
        if resource["Type"] == "AWS::EKS::Addon" and resource["Properties"]["AddonName"] == SECRETS_STORE_ADDON
    ]
    without_driver = copy.deepcopy(cluster)
    del without_driver["Resources"][addon_id]
    keys_off = copy.deepcopy(keyed_prod_data())
    without_keys(keys_off)
    before = {"Cluster": cluster, "Serving": serving_of(keyed_prod_data())}
    # Keys and driver off in one deploy: the old replicas could not unmount their keys.
    (refusal,) = make_plan.plan(before, {"Cluster": without_driver, "Serving": serving_of(keys_off)}).refusals
    assert "aws-secrets-store-csi-driver-provider add-on would be removed before the replicas" in refusal
    assert "cluster.secrets_store_driver: true first" in refusal
    # The driver kept for that deploy (what cluster.secrets_store_driver: true synthesizes), removed in the next.
    kept = {"Cluster": cluster, "Serving": serving_of(keys_off)}
    assert make_plan.plan(before, kept).refusals == []
    assert make_plan.plan(kept, {"Cluster": without_driver, "Serving": serving_of(keys_off)}).refusals == []


@pytest.mark.parametrize(
    ("driver", "keys", "installed"), [(None, True, True), (None, False, False), (True, False, True)]
)
def test_the_key_driver_follows_the_keys_unless_kept(driver: bool | None, keys: bool, installed: bool) -> None:
    data = keyed_prod_data()
    if not keys:
        without_keys(data)
    data["cluster"]["secrets_store_driver"] = driver
    assert parse_stage_settings("prod", data).secrets_store is installed


def test_keys_without_their_driver_are_refused() -> None:
    data = keyed_prod_data()
    data["cluster"]["secrets_store_driver"] = False
    with pytest.raises(SettingsError, match=r"(?s)stage 'prod'.*cluster.secrets_store_driver: false, but models\[0\]"):
        parse_stage_settings("prod", data)


def test_the_deployed_templates_are_read_from_cloudformation_and_a_missing_stack_is_new(dev: Assembly) -> None:
    import boto3
    from botocore.stub import Stubber

    cloudformation = boto3.client(
        "cloudformation", region_name="us-west-2", aws_access_key_id="a", aws_secret_access_key="s"
    )
    network = dev.template("Network")
    with Stubber(cloudformation) as stub:
        for stack in make_plan.STACKS:
            expected = {"StackName": f"dev-{stack}", "TemplateStage": "Original"}
            if stack == "Network":  # as the API sends it; botocore's json_decode_template_body parses it for boto3
                stub.add_response("get_template", {"TemplateBody": json.dumps(network)}, expected)
            else:
                message = f"Stack with id dev-{stack} does not exist"
                stub.add_client_error("get_template", "ValidationError", message, expected_params=expected)
        assert make_plan.deployed_templates("dev", cloudformation) == {"Network": network}
    with Stubber(cloudformation) as stub:
        stub.add_client_error("get_template", "AccessDenied", "not authorized to perform: cloudformation:GetTemplate")
        with pytest.raises(ClientError, match="AccessDenied"):
            make_plan.deployed_templates("dev", cloudformation)


def test_an_add_on_moved_on_purpose_is_said(dev: Assembly) -> None:
    before = {"Cluster": dev.template("Cluster")}
    after = copy.deepcopy(before)
    (addon,) = [r for r in after["Cluster"]["Resources"].values() if r["Type"] == "AWS::EKS::Addon"]
    addon["Properties"]["AddonVersion"] = "v1.7.0-eksbuild.1"
    result = make_plan.plan(before, after)
    assert result.lines == ["Cluster: add-on aws-fsx-csi-driver moves from the version EKS picked to v1.7.0-eksbuild.1"]
    assert result.refusals == []  # a new version updates the add-on in place


def test_a_custom_resource_its_updated_chart_stops_declaring_is_said_to_stay() -> None:
    # The chart that once held every pool held NodeClass `gpu`; updated to a ConfigMap, kubectl's prune leaves it.
    after = serving_of(keyed_prod_data())
    before = copy.deepcopy(after)
    legacy = before["Resources"]["GpuNodePool"]["Properties"]
    objects = json.loads(legacy["Manifest"])
    objects.append({"apiVersion": "eks.amazonaws.com/v1", "kind": "NodeClass", "metadata": {"name": "gpu"}, "spec": {}})
    legacy["Manifest"] = json.dumps(objects)
    assert make_plan.plan({"Serving": before}, {"Serving": after}).lines == [
        "Kubernetes: NodeClass gpu stays in the cluster (kubectl's prune never deletes a NodeClass): "
        "`kubectl delete nodeclass gpu` once nothing uses it"
    ]
    # A chart deleted with its resource deletes all it held (the kubectl handler's `kubectl delete -f`).
    del after["Resources"]["GpuNodePool"]
    assert (
        "Kubernetes: NodeClass gpu is removed from the cluster"
        in make_plan.plan({"Serving": before}, {"Serving": after}).lines
    )


def test_the_gate_stops_a_refused_change_and_says_how_to_go_on(
    dev: Assembly, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    deployed, planned_dir = tmp_path / "deployed", tmp_path / "planned"
    make_plan.save_deployed("dev", dev.directory, root=deployed)
    make_plan.save_deployed("dev", dev.directory, root=planned_dir)
    (store,) = (planned_dir / "dev").glob("devModelStore*.template.json")
    template = json.loads(store.read_text())
    (file_system,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::FSx::FileSystem"]
    file_system["Properties"]["SubnetIds"] = ["subnet-0123"]
    store.write_text(json.dumps(template))
    args = ["--stage", "dev", "--before", str(deployed / "dev"), "--after", str(planned_dir / "dev"), "--gate"]
    assert make_plan.main(args) == 1
    out, err = capsys.readouterr()
    assert "- REFUSED: ModelStore: AWS::FSx::FileSystem" in out
    assert "1 change(s) refused: see the plan above; FORCE=1 deploys anyway" in err


def one_serving_stack(assembly: Assembly) -> dict[str, dict[str, Any]]:
    """The stage as it was deployed before each model had a stack: the model's resources in the serving stack."""
    serving = copy.deepcopy(assembly.template("Serving"))
    model = assembly.model_template()
    serving["Resources"].update(model["Resources"])
    serving.setdefault("Outputs", {}).update(model.get("Outputs", {}))
    return {"Serving": serving}


def test_a_model_moved_to_its_own_stack_must_be_retained_where_it_was_first(dev: Assembly) -> None:
    after = {"Serving": dev.template("Serving"), "Model-gpt-oss-20b": dev.model_template()}
    before = one_serving_stack(dev)
    result = make_plan.plan(before, after)
    # CloudFormation would create the manifest in the model's stack, then delete it from Serving: kubectl delete.
    assert [line.split(" moves")[0] for line in result.refusals] == [
        "Serving: Custom::AWSCDK-EKS-KubernetesResource ClusterModelgptoss20b021B1A4B",
        "Serving: Custom::AWSCDK-EKS-KubernetesPatch GptOss20bReplicaCountPatch41FFAA53",
    ]
    assert all("run `make split-serving` once first" in line for line in result.refusals)
    # The import's role moves with no harm: Serving deletes it before the model's stack creates it again.
    assert "Serving: AWS::EKS::PodIdentityAssociation GptOss20bImportIdentity moves to stack Model-gpt-oss-20b" in (
        result.lines
    )
    assert not [line for line in result.lines if "is removed from the cluster" in line or " is deleted" in line]
    # Retained in Serving first (what `make split-serving` deploys), the move is planned without a refusal.
    for logical_id in ("ClusterModelgptoss20b021B1A4B", "GptOss20bReplicaCountPatch41FFAA53"):
        before["Serving"]["Resources"][logical_id]["DeletionPolicy"] = "Retain"
    assert make_plan.plan(before, after).refusals == []


def test_a_removed_models_stack_is_said_to_go_and_a_removed_stage_stack_is_refused(dev: Assembly) -> None:
    templates = make_plan.assembly_templates(dev.directory)
    without_model = {stack: t for stack, t in templates.items() if stack != "Model-gpt-oss-20b"}
    result = make_plan.plan(templates, without_model)
    assert result.refusals == []
    assert any(
        line.startswith("stack Model-gpt-oss-20b is no longer in the stage: `make deploy` deletes it")
        for line in result.lines
    )
    assert "Kubernetes: Namespace gpt-oss-20b is removed from the cluster" in result.lines
    without_network = {stack: t for stack, t in templates.items() if stack != "Network"}
    assert make_plan.plan(templates, without_network).refusals == ["stack Network is no longer in the stage"]


def test_the_model_stacks_deployed_are_found_by_their_names() -> None:
    import boto3
    from botocore.stub import Stubber

    cloudformation = boto3.client(
        "cloudformation", region_name="us-west-2", aws_access_key_id="a", aws_secret_access_key="s"
    )
    summaries = [
        {"StackName": name, "CreationTime": "2026-12-01T00:00:00Z", "StackStatus": "UPDATE_COMPLETE"}
        for name in ("dev-Model-gpt-oss-20b", "dev-Model-qwen3-8b", "dev-Serving", "prod-Model-gpt-oss-20b")
    ] + [{"StackName": "dev-Model-gone", "CreationTime": "2026-11-01T00:00:00Z", "StackStatus": "DELETE_COMPLETE"}]
    with Stubber(cloudformation) as stub:
        stub.add_response("list_stacks", {"StackSummaries": summaries}, {})
        assert make_plan.deployed_model_stacks("dev", cloudformation) == ["Model-gpt-oss-20b", "Model-qwen3-8b"]


def test_after_a_deploy_the_stacks_of_removed_models_are_deleted_unless_protected(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import boto3
    from botocore.stub import Stubber

    cloudformation = boto3.client(
        "cloudformation", region_name="us-west-2", aws_access_key_id="a", aws_secret_access_key="s"
    )
    before = ["Serving", "Model-gone", "Model-kept", "Model-protected", "Network"]
    after = ["Serving", "Model-kept"]

    def described(name: str, protected: bool, status: str = "UPDATE_COMPLETE") -> dict[str, Any]:
        stack = {"StackName": name, "CreationTime": "2026-12-01T00:00:00Z", "StackStatus": status}
        return {"Stacks": [{**stack, "EnableTerminationProtection": protected}]}

    with Stubber(cloudformation) as stub:
        stub.add_response("describe_stacks", described("dev-Model-gone", False), {"StackName": "dev-Model-gone"})
        stub.add_response("delete_stack", {}, {"StackName": "dev-Model-gone"})
        stub.add_response(
            "describe_stacks", described("dev-Model-gone", False, "DELETE_COMPLETE"), {"StackName": "dev-Model-gone"}
        )
        stub.add_response(
            "describe_stacks", described("dev-Model-protected", True), {"StackName": "dev-Model-protected"}
        )
        assert make_plan.delete_removed_models("dev", before, after, cloudformation) == ["dev-Model-gone"]
    assert "`aws cloudformation update-termination-protection --no-enable-termination-protection --stack-name " in (
        capsys.readouterr().err
    )


def test_keda_going_before_the_scaled_objects_it_finalizes_is_refused(prod: Assembly) -> None:
    before = make_plan.assembly_templates(prod.directory)
    after = copy.deepcopy(before)
    # KEDA's release; the gateway's charts are the others.
    (keda,) = [
        k
        for k, r in after["Serving"]["Resources"].items()
        if r["Type"] == "Custom::AWSCDK-EKS-HelmChart" and r["Properties"]["Release"] == "keda"
    ]
    del after["Serving"]["Resources"][keda]
    scaler = next(k for k in after["Model-gpt-oss-20b"]["Resources"] if k.startswith("Autoscalergptoss20b"))
    del after["Model-gpt-oss-20b"]["Resources"][scaler]
    # Metrics and autoscaling off at once: the serving stack, first, would remove KEDA.
    assert any(
        line.startswith("Serving: KEDA would be removed before") for line in make_plan.plan(before, after).refusals
    )
    # Autoscaling off first (KEDA stays, as it does wherever metrics are on), metrics off next: nothing refused.
    without_scaler = copy.deepcopy(before)
    del without_scaler["Model-gpt-oss-20b"]["Resources"][scaler]
    assert make_plan.plan(before, without_scaler).refusals == []
    assert not [r for r in make_plan.plan(without_scaler, after).refusals if "KEDA" in r]


@pytest.mark.parametrize(
    ("metrics", "autoscaled", "keda"), [(True, True, True), (True, False, True), (False, False, False)]
)
def test_keda_runs_wherever_metrics_do(metrics: bool, autoscaled: bool, keda: bool) -> None:
    data = keyed_prod_data()
    if not autoscaled:
        model(data).pop("autoscaling")
    if not metrics:
        data["metrics"]["enabled"] = False
        data["observability"]["enabled"] = False
    assert parse_stage_settings("prod", data).keda is keda


def test_the_gateway_going_before_the_routes_it_finalizes_is_refused(prod: Assembly) -> None:
    before = make_plan.assembly_templates(prod.directory)
    releases = {"envoy-ai-gateway", "envoy-ai-gateway-crds", "envoy-gateway", "inference-extension-crds"}
    removed = copy.deepcopy(before)
    for key in [
        k for k, r in removed["Serving"]["Resources"].items() if r.get("Properties", {}).get("Release") in releases
    ]:
        del removed["Serving"]["Resources"][key]
    # The routes and pools are the model's gateway chart (Gateway-gpt-oss-20b).
    (routes,) = [k for k in removed["Model-gpt-oss-20b"]["Resources"] if k.startswith("Gatewaygptoss20b")]
    del removed["Model-gpt-oss-20b"]["Resources"][routes]
    # The gateway removed at once: the serving stack, first, would remove its controllers.
    assert any(
        line.startswith("Serving: the gateway's controllers would be removed")
        for line in make_plan.plan(before, removed).refusals
    )
    # gateway.enabled: false first (the controllers stay while the routes go), the gateway removed next.
    disabled = copy.deepcopy(before)
    del disabled["Model-gpt-oss-20b"]["Resources"][routes]
    assert not [r for r in make_plan.plan(before, disabled).refusals if "gateway" in r]
    assert not [r for r in make_plan.plan(disabled, removed).refusals if "gateway" in r]


def test_a_disabled_gateway_keeps_its_controllers_and_takes_the_models_off_it() -> None:
    data = stage_data("prod")
    data["gateway"]["enabled"] = False
    data["models"][0]["api_keys_secret"] = "gpt-oss-20b/api-keys"  # each model is reached on its own again
    settings = parse_stage_settings("prod", data)
    assert settings.routed is None
    assert settings.gateway is not None
    charts = charts_of(data)
    assert not [chart_id for chart_id in charts if chart_id.startswith("Gateway")]
    assert "k8s/prod" in settings.image_cache_prefixes  # the picker's image stays cached until the gateway goes
