"""A stage's monthly cost at its settings, per component, at its region's prices: `make cost STAGE=dev`.

Each line gives the component, how much of it a month, its unit price with the price's source and date, and the
month's cost; a component whose price the tables lack for the region is listed with its quantity and left out of
the total, which says so. Then the rates of what traffic decides. settings/cost.py holds the arithmetic;
settings/catalog/on_demand_prices.yaml and service_prices.yaml the prices (`make prices` renews the latter).
"""

from __future__ import annotations

from commands import stage_from_command_line
from settings.cost import Estimate, estimate


def report(stage: str, result: Estimate) -> str:
    lines = [f"# Monthly cost of stage {stage} in {result.region} (730 hours a month, on-demand prices)", ""]
    lines += ["| component | a month | unit price | cost | price source |", "|---|---|---|---|---|"]
    for line in result.lines:
        if line.price is None or line.monthly is None:
            lines.append(f"| {line.component} | {line.quantity:,.0f} {line.unit} | not in the table | | |")
            continue
        lines.append(
            f"| {line.component} | {line.quantity:,.0f} {line.unit} | ${line.price.usd:g} per {line.price.unit} | "
            f"${line.monthly:,.2f} | {line.price.source} ({line.price.date}) |"
        )
    total = f"**${result.total:,.0f} a month**"
    if result.most is not None:
        total += f", up to ${result.most:,.0f} with every autoscaled model at its most replicas"
    lines += ["", total]
    if result.unpriced:
        lines.append(
            f"not counted, no {result.region} price in the tables: {', '.join(result.unpriced)} "
            "(`make prices` writes them from AWS's price list)"
        )
    lines += ["", "What traffic decides, at these rates:"]
    for what, price in result.usage_rates:
        rate = f"${price.usd:g} per {price.unit} ({price.source}, {price.date})" if price else "not in the table"
        lines.append(f"- {what}: {rate}")
    return "\n".join(lines)


def main() -> None:
    settings = stage_from_command_line("python -m commands.monthly_cost", __doc__)
    print(report(settings.name, estimate(settings)))


if __name__ == "__main__":
    main()
