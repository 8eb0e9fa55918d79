"""vLLM's torch.compile cache, shared by a model's replicas through the model bucket.

vLLM keeps what it compiled under $VLLM_CACHE_ROOT/torch_compile_cache (default ~/.cache/vllm), in directories keyed
by the vLLM version, the model, its model, cache, parallel and compilation settings, the traced source files, the
GPU's name, CUDA and torch (vLLM 0.33.0: vllm/compilation/backends.py, decorators.py, caching.py); a key that differs
is a miss, and vLLM compiles again. Its documentation shares the cache by copying that directory between hosts
(docs.vllm.ai, "torch.compile integration"). vLLM writes into the cache even on a hit, so the directory is a copy in
the pod's own disk, not a read-only mount:

    python3 compile_cache.py restore   # before vLLM starts: the bucket's copy into the pod's cache
    python3 compile_cache.py save      # beside vLLM: once it serves, what the bucket lacks, then it idles

BUCKET and PREFIX name where the copy lives (s3://BUCKET/PREFIX, one prefix a model and vLLM version), ROOT the
cache directory, HEALTH_URL vLLM's /health. Credentials come from EKS Pod Identity, as boto3 finds them. Standard
library and boto3 only, which the vLLM image has.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

POLL_SECONDS = 15


def keys(s3: Any, bucket: str, prefix: str) -> set[str]:
    """Every object key under the prefix."""
    found: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.update(item["Key"] for item in page.get("Contents", []))
    return found


def restore(s3: Any, bucket: str, prefix: str, root: Path) -> int:
    """The bucket's copy into the cache directory; files already there are kept. How many were fetched."""
    fetched = 0
    for key in sorted(keys(s3, bucket, prefix)):
        target = root / key.removeprefix(prefix)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target))
        fetched += 1
    return fetched


def save(s3: Any, bucket: str, prefix: str, root: Path) -> int:
    """What the cache directory has and the bucket lacks, uploaded. How many were."""
    present = keys(s3, bucket, prefix)
    uploaded = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = prefix + path.relative_to(root).as_posix()
        if key not in present:
            s3.upload_file(str(path), bucket, key)
            uploaded += 1
    return uploaded


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str] | None = None, *, poll: float = POLL_SECONDS, idle: bool = True) -> int:
    """Always 0: the cache only saves time, so a failure to copy it is logged and neither stops vLLM from starting
    (restore) nor makes the pod unready, as a sidecar that ends would (save)."""
    # As a container's first process it would ignore SIGTERM, and a pod deleted while it runs (before vLLM serves,
    # or once vLLM has stopped and Kubernetes stops its sidecars) would wait out its whole grace period.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    mode = (sys.argv[1:] if argv is None else argv)[0]
    bucket, prefix, root = os.environ["BUCKET"], os.environ["PREFIX"], Path(os.environ["ROOT"])
    where = f"s3://{bucket}/{prefix}"
    try:
        import boto3

        s3 = boto3.client("s3")
        if mode == "restore":
            print(f"compile cache: {restore(s3, bucket, prefix, root)} files from {where}", flush=True)
            return 0
        while not healthy(os.environ["HEALTH_URL"]):
            time.sleep(poll)
        print(f"compile cache: {save(s3, bucket, prefix, root)} files to {where}", flush=True)
    except Exception as failure:
        print(f"compile cache: not copied ({mode}, {where}): {failure!r}", file=sys.stderr, flush=True)
    # A sidecar that ends is started again, and the pod is not ready meanwhile: it stays, idle, until the pod goes.
    while idle and mode == "save":
        time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
