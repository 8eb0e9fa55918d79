"""The README is a front page, and the docs hold together: every relative link resolves, every `make` target they
name exists, and the figures they state are the ones the code computes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from settings import load_stage_settings
from settings.sizing import candidates, on_demand_prices
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "SECURITY.md", *sorted((ROOT / "docs").glob("*.md"))]
HOURS_A_MONTH = 730
LINK = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)")


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"(?m)^#{1,6} (.+)$", markdown)
    }


def test_the_readme_is_a_front_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "```mermaid" in readme
    for section in ("## What it costs", "## Deploy", "## Call the model", "## Clean up"):
        assert section in readme
    assert "from openai import OpenAI" in readme
    assert "stream=True" in readme


@pytest.mark.parametrize("page", DOCS, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    # Code (a pattern in backticks, a block) is no link.
    text = re.sub(r"```.*?```|`[^`\n]*`", "", page.read_text(), flags=re.DOTALL)
    for target, anchor in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        linked = (page.parent / target).resolve() if target else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked.read_text()), f"{page.name}: {target}#{anchor}"


def test_every_make_target_the_docs_name_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"(?m)^([a-z][a-z0-9-]*):", makefile))
    named = {target for page in DOCS for target in re.findall(r"`make ([a-z][a-z0-9-]*)", page.read_text())}
    assert named - targets == set()


def test_the_readme_prices_the_gpu_nodes_as_the_catalog_does() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    for stage in ("dev", "prod"):
        settings = load_stage_settings(stage)
        (model,) = settings.models
        instance = candidates(settings, model)[0]
        region, prices = on_demand_prices(settings.region)
        hourly = prices[instance.type]
        assert f"a `{instance.type}` costs ${hourly} an hour" in readme
        assert f"in {region}" in readme
        monthly = hourly * HOURS_A_MONTH * model.replicas
        assert f"about ${monthly:,.0f}" in readme, stage
        if model.autoscaling is not None:
            most = hourly * HOURS_A_MONTH * model.autoscaling.max_replicas
            assert f"up to ${most:,.0f}" in readme


def test_the_settings_reference_is_the_one_the_schema_writes() -> None:
    from tools.settings_reference import PAGE, page

    assert PAGE.read_text() == page(), "docs/settings.md is out of date: run `make docs`"


def test_every_settings_field_says_what_it_does() -> None:
    from settings.schema import StageSettings
    from tools.settings_reference import rows

    assert [field for field, _, _, what in rows(StageSettings) if not what.strip()] == []
