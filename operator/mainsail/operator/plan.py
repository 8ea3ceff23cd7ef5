"""What to change: compare desired children with the observed ones, decide per child.

A child is left alone when everything the operator sets is already there with the same value
(fields the API server or other controllers add are ignored; quantities compare by value).
So a steady-state pass writes nothing, an edited or deleted child is put back, and a child
the spec no longer asks for (a removed pool, a cache made external) is deleted — but only if
this deployment is its controller, never someone else's object that happens to match a label.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mainsail.operator.naming import Owner
from mainsail.operator.quantity import is_quantity, parse_quantity

ChildKey = tuple[str, str, str]  # apiVersion, kind, name
_QUANTITY_PARENTS = frozenset({"requests", "limits"})
_MISSING = object()


def child_key(obj: Mapping[str, Any]) -> ChildKey:
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


def controlled_by(obj: Mapping[str, Any], owner: Owner) -> bool:
    """Whether `owner` is the controller of `obj` (matching uid, not only name)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner.uid and ref.get("controller") for ref in refs)


def contains(observed: Any, desired: Any, quantities: bool = False) -> bool:
    """Whether `observed` has every field of `desired` with an equal value."""
    if isinstance(desired, Mapping):
        if observed is _MISSING or observed is None:
            return not desired
        if not isinstance(observed, Mapping):
            return False
        return all(
            contains(observed.get(key, _MISSING), value, quantities or key in _QUANTITY_PARENTS)
            for key, value in desired.items()
        )
    if isinstance(desired, list):
        if observed is _MISSING or observed is None:
            return not desired
        return (
            isinstance(observed, list)
            and len(observed) == len(desired)
            and all(contains(o, d, quantities) for o, d in zip(observed, desired, strict=True))
        )
    if observed is _MISSING:
        return desired is None
    if quantities and is_quantity(desired) and is_quantity(observed):
        return parse_quantity(desired) == parse_quantity(observed)
    return bool(observed == desired)


@dataclass(frozen=True)
class Plan:
    """Per-child decisions of one reconcile pass."""

    create: list[dict[str, Any]] = field(default_factory=list)
    update: list[dict[str, Any]] = field(default_factory=list)
    delete: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[ChildKey] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return len(self.create) + len(self.update) + len(self.delete)


def plan_changes(
    owner: Owner, desired: Iterable[dict[str, Any]], observed: Iterable[Mapping[str, Any]]
) -> Plan:
    """Decide create / update / delete / unchanged for each child."""
    seen = {child_key(obj): obj for obj in observed}
    plan = Plan()
    wanted: set[ChildKey] = set()
    for obj in desired:
        key = child_key(obj)
        wanted.add(key)
        current = seen.get(key)
        if current is None:
            plan.create.append(obj)
        elif contains(current, obj):
            plan.unchanged.append(key)
        else:
            plan.update.append(obj)
    for key, existing in seen.items():
        if key not in wanted and controlled_by(existing, owner):
            plan.delete.append(dict(existing))
    return plan
