"""Full garbage collections a hundred times rarer, for the suite's Python processes: pytest's own (its
conftest runs this file) and, through PYTHONPATH, those it starts in the background (the app under
`cdk synth`, checkov, cfn-lint).

Each of them keeps most of what it builds to its end (modules, jsii proxies, charts and settings; resource
schemas; parsed templates), so a full collection frees little and costs a tenth of a second or more. At
Python's default, one after every 100 collections of young objects, they took a fifth of pytest's CPU and
about a sixth of checkov's and cfn-lint's. Young objects are collected as before, and the peak memory of
pytest's process (about 0.4 GiB) is unchanged. Nothing else differs: what each process computes is the same.
"""

import gc

gc.set_threshold(700, 10, 1000)
