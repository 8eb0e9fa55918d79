"""Real boto3 clients with botocore's Stubber, for tests of the scripts that call AWS: no network, no account."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import boto3
from botocore.stub import Stubber

REGION = "us-west-2"


@functools.cache
def session() -> boto3.session.Session:
    """One session for the test run: it loads each service's model once, its clients are cheap after that."""
    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)


class StubbedClients:
    """One real client per service, each with its Stubber activated; `client` is a client factory."""

    def __init__(self, services: Iterable[str]) -> None:
        self.clients = {service: session().client(service) for service in services}
        self.stubbers = {service: Stubber(client) for service, client in self.clients.items()}
        for stubber in self.stubbers.values():
            stubber.activate()

    def client(self, service: str) -> Any:
        return self.clients[service]

    def add(self, service: str, method: str, response: dict[str, Any], params: dict[str, Any] | None = None) -> None:
        self.stubbers[service].add_response(method, response, params)

    def assert_no_pending_responses(self) -> None:
        for stubber in self.stubbers.values():
            stubber.assert_no_pending_responses()
