"""Domains and randomizations: the names configs, logs and metrics use, and the protos' enums, declared once.

The protos are the source: a randomization mode or a domain exists because
`common.proto` declares it, and its name here is the enum's name without the
prefix, lower-cased ("RANDOMIZATION_VISUAL" is "visual").
"""

from __future__ import annotations

from graspfleet.v1 import common_pb2


def _names(enum, prefix: str) -> dict[str, int]:
    return {
        value.name.removeprefix(prefix).lower(): value.number
        for value in enum.DESCRIPTOR.values
        if value.number  # 0 is each enum's UNSPECIFIED
    }


# The paper's randomization modes of simulated arms: none, visual, dynamics, all.
RANDOMIZATION_VALUES = _names(common_pb2.Randomization, "RANDOMIZATION_")
RANDOMIZATIONS = tuple(RANDOMIZATION_VALUES)
RANDOMIZATION_NAMES = {value: name for name, value in RANDOMIZATION_VALUES.items()}

# The domain an episode is labelled with: sim, real.
DOMAIN_VALUES = _names(common_pb2.Domain, "DOMAIN_")
DOMAIN_NAMES = {value: name for name, value in DOMAIN_VALUES.items()}

# The kinds of arm and the domain their episodes carry: proxy-real and hardware arms
# produce REAL episodes, used exactly like real data.
ARM_DOMAINS = ("sim", "proxy-real", "real")
ARM_DOMAIN_VALUES = {
    "sim": common_pb2.DOMAIN_SIM,
    "proxy-real": common_pb2.DOMAIN_REAL,
    "real": common_pb2.DOMAIN_REAL,
}
