"""Write every chart of a stage as YAML for review, without CDK: `python -m charts --stage dev --outdir dist`.

The files land in <outdir>/<stage>/, one per chart, replacing the previous set only once all
of them are written. Values that exist only once the stage is deployed (the file system's id,
the node role, ...) appear as <placeholders>.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import cdk8s

from charts import DeployedResources, build_charts
from settings import DEFAULT_STAGE, SettingsError, load_stage_settings


def write_manifests(stage: str, outdir: Path) -> list[Path]:
    settings = load_stage_settings(stage)
    target = outdir / stage
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=outdir, prefix=f".{stage}-") as staging:
        app = cdk8s.App(outdir=staging, yaml_output_type=cdk8s.YamlOutputType.FILE_PER_CHART)
        build_charts(app, settings, DeployedResources.placeholders(settings))
        app.synth()
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(staging, target)
        target.chmod(0o755)  # the staging folder was private to this process
        Path(staging).mkdir()  # TemporaryDirectory removes what it created
    return sorted(target.glob("*.yaml"))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m charts", description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default=DEFAULT_STAGE)
    parser.add_argument("--outdir", type=Path, default=Path("dist"))
    args = parser.parse_args()
    try:
        written = write_manifests(args.stage, args.outdir)
    except SettingsError as error:
        sys.exit(f"manifests not written: {error}")
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
