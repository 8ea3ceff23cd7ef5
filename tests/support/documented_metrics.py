"""The metric names docs/protocol.md documents ("Router metrics", "Worker metrics" tables), read
the way the tests check them against a real scrape: every documented name must be exported.

A table row's first cell lists names in backticks; ``{a,b}`` right after an underscore expands
(``pool_{running,waiting}`` -> two names), any other ``{...}`` is the label set and dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

PROTOCOL = Path(__file__).resolve().parents[2] / "docs/protocol.md"
_CODE = re.compile(r"`([^`]+)`")


def _expand(raw: str) -> list[str]:
    name = raw.strip()
    match = re.search(r"_\{([^}]*)\}", name)
    if match:
        head, tail = name[: match.start() + 1], name[match.end() :]
        return [n for part in match.group(1).split(",") for n in _expand(head + part + tail)]
    return [re.sub(r"\{.*\}$", "", name)]


def documented(section: str) -> set[str]:
    """Names in the first column of the table under the ``## <section>`` heading."""
    text = PROTOCOL.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    names: set[str] = set()
    for line in text[start : end if end > 0 else None].splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        for raw in _CODE.findall(first):
            names.update(_expand(raw))
    return names


def not_exported(documented_names: Iterable[str], exported: Iterable[str]) -> set[str]:
    """Documented names no exported family or sample carries (a counter's family drops
    ``_total``; a histogram's samples add ``_bucket``/``_count``/``_sum``)."""
    have = set(exported)
    return {
        n
        for n in documented_names
        if n not in have and n.removesuffix("_total") not in have and f"{n}_count" not in have
    }
