"""The AWS WAF web ACL in front of an exposed model's load balancer: rate limits per API key and in all.

Rate-based rules count requests over a 5-minute window (EvaluationWindowSec: 60, 120, 300 or 600)
and block the excess until the rate falls back below the limit. The per-key rule aggregates on the
Authorization header, which carries the API key; a request without that header is not counted by
it (AWS WAF API Reference, RateBasedStatementCustomKey) but vLLM refuses it with a 401, and the
overall rule counts every request. AWS's Known Bad Inputs rule group goes first, with its rules that inspect the
request body set to count: an LLM API carries arbitrary text in its bodies, and a prompt that quotes a Log4j or
Java deserialization string would otherwise be blocked.
"""

from __future__ import annotations

from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from settings import names
from settings.schema import ExposureSettings, ModelSettings

WINDOW_SECONDS = 300
KNOWN_BAD_INPUTS = "AWSManagedRulesKnownBadInputsRuleSet"
# The group's rules that inspect the body (AWS WAF Developer Guide, "Baseline rule groups", Known bad inputs managed
# rule group: JavaDeserializationRCE_BODY and Log4JRCE_BODY; the others inspect headers, the URI path, the query
# string or the method). They count instead of blocking; `make preflight` checks the group's current rules for a
# new *_BODY one.
KNOWN_BAD_INPUTS_BODY_RULES = ("JavaDeserializationRCE_BODY", "Log4JRCE_BODY")


def _visibility(metric: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
    # No sampled requests: a sample holds every header, the API key in Authorization included, and
    # has no redaction (AWS WAF Developer Guide, "Viewing a sample of web requests").
    return wafv2.CfnWebACL.VisibilityConfigProperty(
        cloud_watch_metrics_enabled=True, metric_name=metric, sampled_requests_enabled=False
    )


def _every_request() -> wafv2.CfnWebACL.StatementProperty:
    """Matches any request: the scope of the overall limit, which a CONSTANT aggregation requires."""
    return wafv2.CfnWebACL.StatementProperty(
        byte_match_statement=wafv2.CfnWebACL.ByteMatchStatementProperty(
            field_to_match=wafv2.CfnWebACL.FieldToMatchProperty(uri_path={}),
            positional_constraint="STARTS_WITH",
            search_string="/",
            text_transformations=[wafv2.CfnWebACL.TextTransformationProperty(priority=0, type="NONE")],
        )
    )


def rate_rules(exposure: ExposureSettings, prefix: str) -> list[wafv2.CfnWebACL.RuleProperty]:
    per_key = wafv2.CfnWebACL.RateBasedStatementProperty(
        limit=exposure.rate_limit_per_key,
        evaluation_window_sec=WINDOW_SECONDS,
        aggregate_key_type="CUSTOM_KEYS",
        custom_keys=[
            wafv2.CfnWebACL.RateBasedStatementCustomKeyProperty(
                header=wafv2.CfnWebACL.RateLimitHeaderProperty(
                    name="authorization",
                    text_transformations=[wafv2.CfnWebACL.TextTransformationProperty(priority=0, type="NONE")],
                )
            )
        ],
    )
    total = wafv2.CfnWebACL.RateBasedStatementProperty(
        limit=exposure.rate_limit_total,
        evaluation_window_sec=WINDOW_SECONDS,
        aggregate_key_type="CONSTANT",
        scope_down_statement=_every_request(),
    )
    return [
        wafv2.CfnWebACL.RuleProperty(
            name="known-bad-inputs",
            priority=0,
            statement=wafv2.CfnWebACL.StatementProperty(
                managed_rule_group_statement=wafv2.CfnWebACL.ManagedRuleGroupStatementProperty(
                    vendor_name="AWS",
                    name=KNOWN_BAD_INPUTS,
                    rule_action_overrides=[
                        wafv2.CfnWebACL.RuleActionOverrideProperty(
                            name=rule, action_to_use=wafv2.CfnWebACL.RuleActionProperty(count={})
                        )
                        for rule in KNOWN_BAD_INPUTS_BODY_RULES
                    ],
                )
            ),
            override_action=wafv2.CfnWebACL.OverrideActionProperty(none={}),
            visibility_config=_visibility(f"{prefix}KnownBadInputs"),
        ),
        wafv2.CfnWebACL.RuleProperty(
            name="rate-per-api-key",
            priority=1,
            statement=wafv2.CfnWebACL.StatementProperty(rate_based_statement=per_key),
            action=wafv2.CfnWebACL.RuleActionProperty(block={}),
            visibility_config=_visibility(f"{prefix}RatePerApiKey"),
        ),
        wafv2.CfnWebACL.RuleProperty(
            name="rate-total",
            priority=2,
            statement=wafv2.CfnWebACL.StatementProperty(rate_based_statement=total),
            action=wafv2.CfnWebACL.RuleActionProperty(block={}),
            visibility_config=_visibility(f"{prefix}RateTotal"),
        ),
    ]


def rate_limited_web_acl(scope: Construct, model: ModelSettings) -> wafv2.CfnWebACL:
    """A regional web ACL for the model's load balancer: the Ingress names it (charts/exposure.py)."""
    assert model.exposure is not None
    return web_acl(scope, names.output_id(model.name), model.model, model.exposure)


def web_acl(scope: Construct, prefix: str, subject: str, exposure: ExposureSettings) -> wafv2.CfnWebACL:
    """A regional web ACL with `exposure`'s rate limits, in front of the load balancer of `subject` (a model, or the
    stage's gateway)."""
    return wafv2.CfnWebACL(
        scope,
        f"{prefix}WebAcl",
        scope="REGIONAL",
        # AWS WAF takes letters, digits, spaces and =:#@/-,. in a description (cfn-lint E3031).
        description=f"Rate limits in front of the internal load balancer of {subject}",
        default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
        rules=rate_rules(exposure, prefix),
        visibility_config=_visibility(f"{prefix}WebAcl"),
    )
