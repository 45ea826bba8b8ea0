"""Kubernetes label selectors (``metav1.LabelSelector``): matchLabels and matchExpressions.

The requirements of one selector are AND-ed; an empty selector (``{}``) selects everything.
Operators: In, NotIn, Exists, DoesNotExist, with Kubernetes' meaning (NotIn and DoesNotExist
also select objects that lack the key).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodeagent.fields import Fields, join

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
#: A label key: an optional DNS-subdomain prefix and a name of at most 63 characters.
_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
LABEL_KEY = re.compile(rf"([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}")
LABEL_VALUE = re.compile(rf"{_NAME}?")


@dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry (matchLabels entries become ``In`` with one value)."""

    key: str
    operator: str  # one of OPERATORS
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True)
class Selector:
    """A parsed label selector; ``Selector()`` (no requirement) selects every object."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


EVERYTHING = Selector()


def parse_selector(value: Any, where: str, fields: Fields) -> Selector:
    """A ``LabelSelector`` object at ``where``; errors go through ``fields`` (naming the path)."""
    obj = fields.obj(value, where, allowed=("matchLabels", "matchExpressions"))
    requirements: list[Requirement] = []
    labels = fields.opt_obj(obj, "matchLabels", where) or {}
    for key, val in labels.items():
        path = join(join(where, "matchLabels"), key)
        fields.text(key, path, pattern=LABEL_KEY, max_len=316)
        fields.text(val, path, pattern=LABEL_VALUE, max_len=63, empty=True)
        requirements.append(Requirement(key, "In", frozenset((val,))))
    for i, item in enumerate(fields.items(obj, "matchExpressions", where)):
        path = join(join(where, "matchExpressions"), i)
        expr = fields.obj(item, path, allowed=("key", "operator", "values"))
        key = fields.string(expr, "key", path, pattern=LABEL_KEY, max_len=316)
        op = fields.choice(expr, "operator", path, {o: o for o in OPERATORS})
        values = [fields.text(v, join(join(path, "values"), j), pattern=LABEL_VALUE,
                              max_len=63, empty=True)
                  for j, v in enumerate(fields.items(expr, "values", path))]
        if op in ("In", "NotIn") and not values:
            fields.fail(join(path, "values"), f"must not be empty for operator {op}")
        if op in ("Exists", "DoesNotExist") and values:
            fields.fail(join(path, "values"), f"must be empty for operator {op}")
        requirements.append(Requirement(key, op, frozenset(values)))
    return Selector(tuple(requirements))
