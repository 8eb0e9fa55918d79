"""A CloudWatch data source that answers with PromQL from the stage's Amazon Managed Service for Prometheus workspace.

CloudWatch dashboards and alarms call it through metric math: LAMBDA("<this function>", "<PromQL>").
The contract (CloudWatch User Guide, "Create a custom connector to a data source"):
- the event {"EventType": "GetMetricData", "GetMetricDataRequest": {"StartTime", "EndTime", "Period",
  "Arguments"}}, times in epoch seconds, answered with {"MetricDataResults": [{"StatusCode", "Label",
  "Timestamps", "Values"}]} or {"Error": {"Code", "Value"}};
- points must fall on StartTime + k * Period: a Prometheus range query with start StartTime and step
  Period evaluates exactly there (Prometheus HTTP API, /api/v1/query_range). Each point is the
  signal's value at that instant; over the periods of a long time range a brief spike between two
  points does not show (the recorded signals are already rates and quantiles over minutes);
- an alarm gives the function 4.5 s, a dashboard 10 s.
The query is signed with SigV4 for the `aps` service (AMP User Guide, "Prometheus-compatible APIs").
"""

from __future__ import annotations

import http.client
import json
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

# Inside an alarm's 4.5 s, with room for signing and answering.
QUERY_TIMEOUT_SECONDS = 3.5
EXAMPLE_QUERY = "namespace:vllm_num_requests_waiting:sum"


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("EventType") == "DescribeGetMetricData":
        return {
            "Description": "A PromQL query against the stage's Prometheus workspace: one time series per result.",
            "ArgumentDefaults": [{"Value": EXAMPLE_QUERY}],
        }
    request = event["GetMetricDataRequest"]
    arguments = request.get("Arguments", [])
    if len(arguments) != 1 or not isinstance(arguments[0], str) or not arguments[0].strip():
        return error("Validation", 'one argument, a PromQL query: LAMBDA("<function>", "<query>")')
    try:
        answer = query_range(arguments[0], request["StartTime"], request["EndTime"], request["Period"])
    except urllib.error.HTTPError as refused:
        # Prometheus explains a query it cannot parse (400) or run (422) in its body (HTTP API, "Format overview").
        return error("Validation" if refused.code in (400, 422) else "PrometheusError", refused.read().decode()[:500])
    except (OSError, ValueError, http.client.HTTPException) as failure:
        return error("PrometheusUnreachable", str(failure))
    series = [time_series(result) for result in answer["data"]["result"]]
    # An alarm needs one series even when nothing matched: an empty one reads as missing data.
    return {"MetricDataResults": series or [{"StatusCode": "Complete", "Label": "", "Timestamps": [], "Values": []}]}


def query_range(query: str, start: int, end: int, step: int) -> dict[str, Any]:
    url = os.environ["PROMETHEUS_QUERY_URL"] + "/api/v1/query_range"
    body = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": step})
    signed = AWSRequest(
        method="POST", url=url, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    credentials = botocore.session.get_session().get_credentials()
    SigV4Auth(credentials, "aps", os.environ["AWS_REGION"]).add_auth(signed)
    request = urllib.request.Request(url, data=body.encode(), headers=dict(signed.headers), method="POST")
    with urllib.request.urlopen(request, timeout=QUERY_TIMEOUT_SECONDS) as response:
        return json.load(response)


def time_series(result: dict[str, Any]) -> dict[str, Any]:
    """One Prometheus series as CloudWatch's: labelled by its labels, without the points that are not numbers
    (NaN where a ratio had no requests), which CloudWatch's JSON cannot carry."""
    points = [(int(stamp), float(value)) for stamp, value in result["values"] if math.isfinite(float(value))]
    return {
        "StatusCode": "Complete",
        "Label": label(result["metric"]),
        "Timestamps": [stamp for stamp, _ in points],
        "Values": [value for _, value in points],
    }


def label(metric: dict[str, str]) -> str:
    """The series' name in a legend: its namespace (the model) when it has one, else all its labels."""
    if "namespace" in metric:
        return metric["namespace"]
    return ",".join(f"{key}={value}" for key, value in sorted(metric.items()) if key != "__name__")


def error(code: str, message: str) -> dict[str, Any]:
    return {"Error": {"Code": code, "Value": message}}
