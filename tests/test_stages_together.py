"""Stages that may deploy into one account: no physical name of one may be another's."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from settings import (
    STAGES_DIR,
    SettingsError,
    StageSettings,
    check_shared_names,
    load_stage_settings,
    parse_stage_settings,
)
from settings.names import CLUSTER_FIXED_NAMES
from tests.conftest import stage_data


def stage(name: str, *, cluster: str, account: str | None = None, region: str = "us-west-2") -> StageSettings:
    data = stage_data()
    data["region"], data["availability_zones"] = region, [f"{region}a", f"{region}b"]
    data["cluster"]["name"] = cluster
    if account:
        data["account"] = account
    return parse_stage_settings(name, data)


def refusal(*stages: StageSettings) -> str:
    with pytest.raises(SettingsError) as caught:
        check_shared_names(list(stages))
    return str(caught.value)


@pytest.mark.parametrize(("first", "second"), [("111111111111", "111111111111"), (None, "111111111111"), (None, None)])
def test_two_stages_that_may_share_an_account_and_region_may_not_share_a_cluster_name(
    first: str | None, second: str | None
) -> None:
    message = refusal(stage("qa", cluster="shared", account=first), stage("staging", cluster="shared", account=second))
    assert message.startswith("stage 'qa' has invalid settings:\n  cluster.name: stages qa and staging may deploy")
    # Every name the stacks derive from the cluster's name is named, and the field to change.
    for fixed in CLUSTER_FIXED_NAMES:
        assert f"{fixed.what} {fixed.derive('shared')}" in message
    assert message.endswith("give one of them another cluster.name")


def test_in_two_regions_of_one_account_only_the_iam_role_collides() -> None:
    # IAM names are unique in an account, whatever the region; the rest are regional.
    message = refusal(stage("qa", cluster="shared"), stage("eu", cluster="shared", region="eu-west-1"))
    assert "us-west-2 and eu-west-1" in message
    assert "smoke test trigger IAM role shared-smoke-test-trigger" in message
    assert "EKS cluster" not in message


def test_stages_in_other_accounts_or_with_other_cluster_names_may_deploy() -> None:
    check_shared_names(
        [
            stage("qa", cluster="shared", account="111111111111"),
            stage("staging", cluster="shared", account="222222222222"),
            stage("other", cluster="other"),
        ]
    )


def test_a_stage_file_that_would_take_anothers_names_stops_its_synth(tmp_path: Path) -> None:
    for name in ("dev", "prod"):
        (tmp_path / f"{name}.yaml").write_text((STAGES_DIR / f"{name}.yaml").read_text())
    data = yaml.safe_load((tmp_path / "dev.yaml").read_text())
    data["cluster"]["name"] = "gpu-inference-prod"
    (tmp_path / "dev.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SettingsError, match=r"cluster\.name: stages dev and prod may deploy into one account"):
        load_stage_settings("dev", tmp_path)
