"""Client-supplied names that become paths: one pattern, and a check that a path stays inside."""

from __future__ import annotations

import re
from pathlib import Path

from services.common.errors import InvalidArgument

# Letters, digits, dot, underscore and hyphen, starting with a letter or digit: no
# separator, no "..", nothing a filesystem or a URL treats specially.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 100
RULE = f"1-{MAX_NAME} characters of [A-Za-z0-9._-], starting with a letter or digit"


def check_name(field: str, value: str, max_length: int = MAX_NAME) -> str:
    """`value` if it is a valid name.

    Raises:
        InvalidArgument: the value could escape a folder or is too long; the
            message names the field and the rule.
    """
    if len(value) > max_length or not NAME.fullmatch(value):
        shown = value if len(value) <= 80 else value[:80] + "..."
        rule = RULE.replace(str(MAX_NAME), str(max_length))
        raise InvalidArgument(f"{field} {shown!r} is not a valid name: use {rule}")
    return value


def inside(root: str | Path, *parts: str) -> Path:
    """`root/parts...`, refused if it resolves outside `root` (links included).

    Raises:
        InvalidArgument: the path leaves `root`.
    """
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise InvalidArgument(f"{'/'.join(parts)!r} leads outside {root}")
    return path
