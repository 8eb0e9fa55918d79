"""The AWS stubs share one client per service between tests: each test's Stubber answers only its own calls."""

from __future__ import annotations

import pytest

from tests.aws_stubs import StubbedClients

BUCKETS = {"Buckets": [{"Name": "first"}]}


def test_a_stubbed_client_answers_within_its_block_only() -> None:
    stubs = StubbedClients(("s3",))
    with pytest.raises(RuntimeError, match="only within its with block"):
        stubs.client("s3")
    with stubs:
        stubs.add("s3", "list_buckets", BUCKETS)
        assert stubs.client("s3").list_buckets()["Buckets"] == BUCKETS["Buckets"]
    with pytest.raises(RuntimeError, match="only within its with block"):
        stubs.client("s3")


def test_the_next_test_gets_the_shared_client_with_only_its_own_answers() -> None:
    with StubbedClients(("s3",)) as first:
        first.add("s3", "list_buckets", BUCKETS)  # queued, never asked for
    with StubbedClients(("s3",)) as second:
        second.add("s3", "list_buckets", {"Buckets": [{"Name": "second"}]})
        assert second.client("s3").list_buckets()["Buckets"] == [{"Name": "second"}]
        second.assert_no_pending_responses()
    assert second.clients["s3"] is first.clients["s3"]  # one client, shared


def test_two_stubs_of_one_service_at_once_are_refused() -> None:
    with StubbedClients(("s3", "ec2")), pytest.raises(RuntimeError, match="s3 already stubbed"):
        StubbedClients(("s3",)).__enter__()
    with StubbedClients(("s3",)):  # the refused one left nothing behind
        pass
