"""Full garbage collections a hundred times rarer, for the suite's Python processes: pytest's own (its
conftest runs this file) and, through PYTHONPATH, those it starts in the background (the app under
`cdk synth`, checkov, cfn-lint: tests/conftest.py, start_in_background).

Each of them keeps most of what it builds to its end (modules, jsii proxies, charts and settings; resource
schemas; parsed templates), so a full collection frees little and costs a tenth of a second or more. At
Python's default, one after every 100 collections of young objects, they took a fifth of pytest's CPU and
about a sixth of checkov's and cfn-lint's. Young objects are collected as before, and the peak memory of
pytest's process (about 0.4 GiB) is unchanged. Nothing else differs: what each process computes is the same.
"""

import gc
import importlib.util
import os
import sys
from importlib.machinery import PathFinder

gc.set_threshold(700, 10, 1000)

if __name__ == "sitecustomize":
    # Python imports only the first sitecustomize on its path, and this one comes first: the one it hides (a
    # distribution's, a tracer's) runs too, as it would have without this folder.
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != here]
    hidden = PathFinder.find_spec("sitecustomize", rest)
    if hidden is not None and hidden.loader is not None:
        hidden.loader.exec_module(importlib.util.module_from_spec(hidden))
