"""Randomizations and domains come from the protos, and every place that names them agrees."""

from __future__ import annotations

from graspfleet.v1 import common_pb2
from robots import config, names
from robots.drivers import DRIVERS


def test_the_names_are_the_protos_enums():
    assert names.RANDOMIZATIONS == ("none", "visual", "dynamics", "all")
    assert names.RANDOMIZATION_VALUES["visual"] == common_pb2.RANDOMIZATION_VISUAL
    assert names.DOMAIN_NAMES == {common_pb2.DOMAIN_SIM: "sim", common_pb2.DOMAIN_REAL: "real"}
    # Every enum value but UNSPECIFIED has a name, and the names round-trip.
    declared = [v for v in common_pb2.Randomization.values() if v]
    assert sorted(names.RANDOMIZATION_NAMES) == sorted(declared)
    assert all(names.RANDOMIZATION_VALUES[n] == v for v, n in names.RANDOMIZATION_NAMES.items())


def test_every_arm_kind_has_a_domain_and_the_world_takes_every_randomization():
    assert set(names.ARM_DOMAIN_VALUES) == set(names.ARM_DOMAINS)
    assert {"sim", "proxy-real"} <= set(DRIVERS)
    for randomization in names.RANDOMIZATIONS:
        assert config.WorldConfig(randomization=randomization).randomization == randomization
