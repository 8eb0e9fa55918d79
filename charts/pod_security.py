"""How every pod of the project is hardened: the restricted Pod Security Standard, and a read-only root filesystem.

Every pod is a cdk8s-plus workload, so these are cdk8s-plus properties, written once here.
"""

from __future__ import annotations

import cdk8s_plus_30 as kplus

# The restricted Pod Security Standard: non-root, no privilege escalation, all capabilities dropped, RuntimeDefault
# seccomp, only ephemeral volume types. Each namespace of the project enforces it, and its pods meet it.
POD_SECURITY_LABELS = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")}


def hardened(user: int) -> kplus.ContainerSecurityContextProps:
    """A container's context: the restricted standard's settings, with a read-only root filesystem, as `user`."""
    return kplus.ContainerSecurityContextProps(
        ensure_non_root=True,
        user=user,
        group=user,
        privileged=False,
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        capabilities=kplus.ContainerSecutiryContextCapabilities(drop=[kplus.Capability.ALL]),
        # cdk8s-plus sets seccomp on containers only (its PodSecurityContext has no seccompProfile), which the
        # restricted standard accepts when every container sets it.
        seccomp_profile=kplus.SeccompProfile(type=kplus.SeccompProfileType.RUNTIME_DEFAULT),
    )


def non_root_pod(user: int) -> kplus.PodSecurityContextProps:
    """A pod's context: non-root as `user`, its volumes writable by that user's group."""
    return kplus.PodSecurityContextProps(ensure_non_root=True, user=user, group=user, fs_group=user)


# checkov's reason for an image pinned by its version tag rather than a digest (CKV_K8S_43).
PINNED_BY_TAG = "pinned by a version tag (a model's image in the stage settings may also be a digest)"


def checkov_skip_annotations(exceptions: dict[str, str]) -> dict[str, str]:
    """checkov's skip annotations, one per check with its reason, on the workload where checkov reads them."""
    return {
        f"checkov.io/skip{number}": f"{check}={reason}" for number, (check, reason) in enumerate(exceptions.items(), 1)
    }
