"""The cold-start budget of a stage's models, as a table: `make cold-start STAGE=dev`."""

from __future__ import annotations

from commands import stage_from_command_line
from settings.cold_start import (
    WARM_NODE_SKIPS,
    cold_start_seconds,
    cold_start_steps,
    import_deadline_seconds,
    import_steps,
    levers,
    model_load_step,
    progress_deadline_seconds,
    smoke_test_wait_seconds,
    startup_probe_seconds,
    warm_start_seconds,
    with_every_lever,
)
from settings.schema import ModelSettings


def budget_basis(model: ModelSettings) -> str:
    """Why the budgets take the model load they take."""
    if model.load_seconds is not None:
        return "models[].load_seconds"
    return "the walkthrough's few minutes until models[].load_seconds gives a start measured for this vLLM and GPU"


def main() -> None:
    settings = stage_from_command_line("python -m commands.cold_start_budget", __doc__)
    for model in settings.models:
        steps = cold_start_steps(settings, model)
        print(f"## Cold start of a new {model.model} replica (stage {settings.name})\n")
        print("| step | seconds | assumes | source |\n|---|---:|---|---|")
        for step in steps:
            print(f"| {step.name} | {step.seconds:.0f} | {step.assumes} | {step.source} |")
        print(f"| **total on a new node** | **{sum(step.seconds for step in steps):.0f}** | | |")
        print(
            f"| **total on a warm spare's node** | **{warm_start_seconds(settings, model):.0f}** | without "
            f"{', '.join(WARM_NODE_SKIPS)} | charts/warm_spares.py |\n"
        )
        print("| lever | step | used | seconds of the step with it | source |\n|---|---|---|---:|---|")
        for lever in levers(settings, model):
            seconds = "n/a" if lever.seconds is None else f"{lever.seconds:.0f}"
            print(f"| {lever.name} | {lever.step} | {'yes' if lever.on else 'no'} | {seconds} | {lever.source} |")
        new_node, warm_node = with_every_lever(settings, model)
        print(
            "\nWith every lever that has a figure (the fastest file system tier on nodes whose network keeps up with "
            f"it, a full compile cache): "
            f"{new_node:.0f} s on a new node whose image the stage's cache holds, {warm_node:.0f} s on a warm spare's "
            "node.\n"
        )
        print(
            f"startupProbe budget: {startup_probe_seconds(settings, model)} s (2 x (weight read + "
            f"{model_load_step(model, budget=True).seconds:.0f} s of model load: {budget_basis(model)})); "
            f"rollout progress deadline: {progress_deadline_seconds(settings, model)} s "
            f"(2 x the total with that model load, {cold_start_seconds(settings, model, budget=True):.0f} s); "
            f"the smoke test waits up to {smoke_test_wait_seconds(settings, model)} s "
            "(2 x the deadline and the import)\n"
        )
        imported = import_steps(settings, model)
        if imported:
            print(f"### Once per revision: importing {model.model} at {model.revision}\n")
            print("| step | seconds | assumes | source |\n|---|---:|---|---|")
            for step in imported:
                print(f"| {step.name} | {step.seconds:.0f} | {step.assumes} | {step.source} |")
            print(f"| **total** | **{sum(step.seconds for step in imported):.0f}** | | |\n")
            print(f"import job deadline: {import_deadline_seconds(settings, model)} s\n")


if __name__ == "__main__":
    main()
