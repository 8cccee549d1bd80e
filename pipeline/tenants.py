"""Tenants and their fair shares: the policy file (LEGATO_TENANTS_FILE) and a submit's tenant.

    capacity: 200            # runs admitted (in flight) at once across the cluster
    window_seconds: 60       # the sliding window of tokens that fair share counts
    default:                 # any tenant the file does not name
      weight: 1
      max_concurrent_runs: 50
    tenants:
      acme:
        weight: 3
        max_concurrent_runs: 100
        limits: {fast: {rpm: 600, tpm: 200000}}     # per model alias, for this tenant alone
        spend_cap: {day: 20.0, month: 300.0, on_cap: hold}

Admission (legato.admission) reads the policy from Redis, where every process that loads the
file publishes it (`Policies.flat`): one file for the cluster, producers and workers alike.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from legato.errors import InputError, SpecError
from legato.fields import Strict
from legato.models.config import RateLimit

TENANT = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
DEFAULT_TENANT = "default"
PRIORITIES = range(-1000, 1001)  # higher first; 0 unless the submit says


class SpendCap(Strict):
    """Spend (from the models' price tables) per UTC day and month. Reached: new runs fail
    (`fail`) or wait for the next day or month (`hold`)."""

    day: float | None = Field(None, gt=0)
    month: float | None = Field(None, gt=0)
    on_cap: Literal["fail", "hold"] = "fail"


class AliasLimit(Strict):
    """A tenant's own rate limit on one model alias, beside the alias's cluster-wide one."""

    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)


class TenantPolicy(Strict):
    weight: float = Field(1.0, gt=0, description="its share of tokens, relative to others'")
    max_concurrent_runs: int | None = Field(None, ge=1)
    limits: dict[str, AliasLimit] = Field(default_factory=dict)
    spend_cap: SpendCap | None = None


class Policies(Strict):
    capacity: int = Field(100, ge=1, description="runs in flight at once, cluster-wide")
    window_seconds: float = Field(60.0, gt=0)
    run_tokens: int = Field(1000, ge=1, description="a run's tokens, guessed, before any ends "
                            "(a tenant new to the window counts as the others' average)")
    default: TenantPolicy = Field(
        default_factory=lambda: TenantPolicy(weight=1.0, max_concurrent_runs=None))
    tenants: dict[str, TenantPolicy] = Field(default_factory=dict)

    def of(self, tenant: str) -> TenantPolicy:
        return self.tenants.get(tenant, self.default)

    @property
    def has_limits(self) -> bool:
        return any(p.limits for p in [self.default, *self.tenants.values()])

    def rate_limits(self, tenant: str) -> dict[str, RateLimit]:
        """The tenant's own rate limits, per model alias, as the gateway's buckets take them."""
        return {alias: RateLimit(requests=lim.rpm, tokens=lim.tpm, per=60.0)
                for alias, lim in self.of(tenant).limits.items() if lim.rpm or lim.tpm}

    def flat(self) -> dict[str, str]:
        """The policy as the admission scripts read it: one hash, `<tenant>|<field>` (`*` for
        the default), no field for a limit that is not set."""
        out = {"capacity": str(self.capacity), "window": repr(self.window_seconds),
               "run_tokens": str(self.run_tokens)}
        for name, policy in [("*", self.default), *self.tenants.items()]:
            out[f"{name}|weight"] = repr(policy.weight)
            out[f"{name}|max"] = str(policy.max_concurrent_runs or 0)
            cap = policy.spend_cap
            out[f"{name}|day"] = repr(cap.day) if cap and cap.day else "0"
            out[f"{name}|month"] = repr(cap.month) if cap and cap.month else "0"
            out[f"{name}|on_cap"] = cap.on_cap if cap else "fail"
        return out


def load_policies(path: Path | str) -> Policies:
    """The policy file, checked; SpecError names the file and the field."""
    source = str(path)
    try:
        data: Any = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read the tenants file: {exc}", source=source) from None
    try:
        policies = Policies.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SpecError(first["msg"], source=source, path=where) from None
    for name in policies.tenants:
        if not TENANT.match(name):
            raise SpecError(f"tenant name {name!r}: letters, digits and _.:- only (64 at most)",
                            source=source, path=f"tenants.{name}")
    return policies


def check_submit(tenant: str | None, priority: int | None) -> tuple[str, int]:
    """A submit's tenant and priority, defaulted; InputError names the bad one."""
    name = DEFAULT_TENANT if tenant is None else tenant
    if not isinstance(name, str) or not TENANT.match(name):
        raise InputError(f"tenant {name!r} refused: letters, digits and _.:- only, 1 to 64")
    level = 0 if priority is None else priority
    if isinstance(level, bool) or not isinstance(level, int) or level not in PRIORITIES:
        raise InputError(f"priority {level!r} refused: an integer from -1000 to 1000")
    return name, level
