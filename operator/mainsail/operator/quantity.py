"""Kubernetes resource quantities (`500m`, `1Gi`, `1.5G`) as exact decimals.

Why: the API server rewrites quantities into canonical form (`1024Mi` comes back as `1Gi`,
`1000m` as `1`), so the drift check must compare values, not strings, or it would re-apply
unchanged objects forever.
"""

from __future__ import annotations

import re
from decimal import Decimal

_FACTORS: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(
    r"^([+-]?[0-9]+(?:\.[0-9]*)?|[+-]?\.[0-9]+)(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E))?$"
)


def parse_quantity(text: str | int | float) -> Decimal:
    """The value of a quantity; raises ValueError for anything Kubernetes would refuse."""
    if isinstance(text, bool):
        raise ValueError(f"not a quantity: {text!r}")
    if isinstance(text, int | float):
        return Decimal(str(text))
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    number, exponent, suffix = match.groups()
    value = Decimal(number)
    if exponent:
        return value * Decimal(10) ** int(exponent[1:])
    return value * _FACTORS[suffix or ""]


def is_quantity(text: object) -> bool:
    """Whether `text` parses as a quantity."""
    if not isinstance(text, str | int | float) or isinstance(text, bool):
        return False
    try:
        parse_quantity(text)
    except ValueError:
        return False
    return True


def ceil_bytes(text: str) -> int:
    """Whole bytes in a memory quantity, rounded up."""
    return int(parse_quantity(text).to_integral_value(rounding="ROUND_CEILING"))
