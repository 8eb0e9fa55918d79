"""Real boto3 clients with botocore's Stubber, for tests of the commands that call AWS: no network, no account."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, Self

import boto3
from botocore.stub import Stubber

REGION = "us-west-2"


@functools.cache
def session() -> boto3.session.Session:
    """One session for the test run: it loads each service's model once, its clients are cheap after that."""
    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)


@functools.cache
def client(service: str) -> Any:
    """One client per service for the test run: creating one costs tens of milliseconds, and a Stubber
    leaves it as it found it once deactivated."""
    return session().client(service)


# The services whose shared client has a Stubber active: botocore's Stubber registers its handlers under fixed
# ids, so a second one on a client would answer from the first one's queue and remove its handlers on leaving.
_STUBBED: set[str] = set()


class StubbedClients:
    """One real client per service, each with its Stubber activated while in a `with` block; `client` is a
    client factory."""

    def __init__(self, services: Iterable[str]) -> None:
        self.clients = {service: client(service) for service in services}
        self.stubbers = {service: Stubber(client) for service, client in self.clients.items()}
        self.active = False

    def __enter__(self) -> Self:
        if already := _STUBBED & self.clients.keys():
            raise RuntimeError(f"{', '.join(sorted(already))} already stubbed: one StubbedClients at a time")
        for stubber in self.stubbers.values():
            stubber.activate()
        _STUBBED.update(self.clients)
        self.active = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        # The clients are shared: a Stubber left active would answer the next test's calls, from its own queue.
        for stubber in self.stubbers.values():
            stubber.deactivate()
        _STUBBED.difference_update(self.clients)
        self.active = False

    def client(self, service: str) -> Any:
        if not self.active:  # outside its block, the call would go to AWS
            raise RuntimeError("StubbedClients answers only within its with block")
        return self.clients[service]

    def add(self, service: str, method: str, response: dict[str, Any], params: dict[str, Any] | None = None) -> None:
        self.stubbers[service].add_response(method, response, params)

    def assert_no_pending_responses(self) -> None:
        for stubber in self.stubbers.values():
            stubber.assert_no_pending_responses()
