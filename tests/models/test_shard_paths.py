"""Where the store puts an episode's shard: always inside shards/, whatever the robot id."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.episodes.shards import ShardDirectory


@pytest.mark.parametrize("robot_id", ["..", ".", "", "...", "a/../..", "kuka-01"])
def test_a_shard_stays_in_its_robot_folder_under_shards(tmp_path, robot_id):
    files = ShardDirectory(tmp_path)
    relative = Path(files.relative_path("ep-1", "0" * 64, robot_id))
    resolved = (tmp_path / relative).resolve()
    assert resolved.parent.parent == (tmp_path / "shards").resolve(), relative
