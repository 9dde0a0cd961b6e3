"""The levers protocol trains each row on what it says: equal budgets, the halves it names."""

from __future__ import annotations

from experiments.levers.__main__ import collections, training_set
from experiments.levers.protocol import COMPACT_TRAINING_ARM, ROWS, Settings
from graspfleet.v1 import common_pb2, episode_store_pb2, sim_farm_pb2
from robots.inventory import parse_arm

Policy = sim_farm_pb2.CollectionPolicy


def _episodes(name: str, count: int) -> list[episode_store_pb2.EpisodeSummary]:
    return [episode_store_pb2.EpisodeSummary(episode_id=f"{name}-{i:04d}") for i in range(count)]


def test_every_row_has_the_same_budget_and_the_halves_its_protocol_names():
    settings = Settings(episodes=10)
    data = {
        name: _episodes(name, count)
        for name, count in (("random", 10), ("noisy-oracle", 5), ("compact", 5))
    }
    sets = {row: [e.episode_id for e in training_set(row, data, settings)] for row in ROWS}
    assert {len(s) for s in sets.values()} == {10}
    assert sets["random-data"] == [f"random-{i:04d}" for i in range(10)]
    # The same first half of random episodes in both mixes: only the other half differs.
    assert sets["mixed-data"][:5] == sets["compact-data"][:5] == sets["random-data"][:5]
    assert sets["mixed-data"][5:] == [f"noisy-oracle-{i:04d}" for i in range(5)]
    assert sets["compact-data"][5:] == [f"compact-{i:04d}" for i in range(5)]


def test_the_collections_are_simulated_and_the_compact_one_on_compact_objects():
    specs = collections(Settings())
    assert specs["noisy-oracle"].policy.kind == Policy.KIND_NOISY_ORACLE
    assert specs["noisy-oracle"].domain == common_pb2.DOMAIN_SIM
    assert {specs[n].object_set for n in ("random", "noisy-oracle")} == {"train"}
    assert specs["validation"].object_set == "sim-test"
    arm = parse_arm(specs["compact"].arm_config_yaml, "compact")
    assert arm.driver == "sim" and arm.world.object_set == "procedural"
    assert arm.world.object_size_range_m == (0.07, 0.10) and arm.world.objects_per_bin == 3
    assert specs["compact"].arm_config_yaml == COMPACT_TRAINING_ARM.read_text()
    # Every collection draws its own scenes.
    assert len({s.seed for s in specs.values()}) == len(specs)


def test_the_table_reread_over_seeds_pairs_rows_and_widens_with_their_spread():
    from experiments.sim2real.seeded import reread

    def seed(successes: set[int]) -> dict:
        return {"outcomes": {str(s): s in successes for s in range(40)}}

    table = {
        "rows": [
            {"row": "sim-only", "seeds": [seed(set(range(10))), seed(set(range(10)))]},
            {"row": "rand", "seeds": [seed(set(range(0))), seed(set(range(20)))]},
        ],
        "baselines": {"random": seed(set(range(4))), "oracle": seed(set(range(30)))},
    }
    result = reread(table)
    steady = result["minus_random"]["sim-only - random"]
    assert steady["difference"] == 0.15 and steady["seeds"] == [2, 1]
    spread = result["planned"]["rand - sim-only"]
    assert spread["difference"] == 0.0 and spread["seeds"] == [2, 2]
    assert spread["low"] < -0.1 and spread["high"] > 0.1  # 0 or 20 of 40 by seed
