"""YAML as the project reads it: with libyaml's parser where PyYAML has it, and errors in the words of
PyYAML's own parser."""

from __future__ import annotations

from typing import Any

import yaml

# PyYAML's wheels carry libyaml. The documents read are the same (the tags are resolved by the same
# Python code); libyaml parses them about ten times faster.
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    """What yaml.safe_load reads. A document libyaml refuses is read again by the pure-Python parser, whose
    error shows the line and points at the column."""
    try:
        return yaml.load(text, Loader=FAST_LOADER)
    except yaml.YAMLError:
        return yaml.safe_load(text)
