"""The `graspfleet` command against a real store."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from models.episodes import synthetic as samples
from services import cli
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server


@pytest.fixture
def address(tmp_path):
    server = create_server(EpisodeStoreConfig(port=0, data_dir=str(tmp_path)))
    channel, stub = client.connect(server.address)
    with channel:
        for seed in range(3):
            client.write_episode(
                stub, samples.sample_episode(seed, robot_id=f"kuka-0{seed % 2 + 1}")
            )
    yield server.address
    server.stop(grace_s=0)


def test_episodes_ls_stats_show_relabel(address, capsys):
    assert cli.main(["episodes", "ls", "--store", address, "--robot", "kuka-01"]) == 0
    listing = capsys.readouterr().out
    assert "sample-0" in listing and "sample-2" in listing and "sample-1" not in listing

    assert cli.main(["episodes", "stats", "--store", address]) == 0
    assert "episodes 3  steps 30" in capsys.readouterr().out

    assert (
        cli.main(
            [
                "episodes",
                "relabel",
                "sample-1",
                "--success",
                "--reason",
                "seen on video",
                "--source",
                "user:ana",
                "--store",
                address,
            ]
        )
        == 0
    )
    assert "2 labels in its history" in capsys.readouterr().out

    assert cli.main(["episodes", "show", "sample-1", "--steps", "--store", address]) == 0
    shown = capsys.readouterr().out
    assert 'source: "user:ana"' in shown and "bytes>" in shown


def test_episodes_are_drawn_as_a_strip_and_a_contact_sheet(address, tmp_path, capsys):
    from PIL import Image

    strip, sheet = tmp_path / "strip.png", tmp_path / "sheet.png"
    assert cli.main(["episodes", "show", "sample-1", "--png", str(strip), "--store", address]) == 0
    assert cli.main(["episodes", "ls", "--png", str(sheet), "--store", address]) == 0
    with Image.open(strip) as drawn:
        # x0 and the ten steps wrap onto two rows of six panels.
        assert drawn.format == "PNG" and drawn.width > drawn.height > 400
    with Image.open(sheet) as drawn:
        assert drawn.format == "PNG" and drawn.height > drawn.width  # one row per episode
    empty = ["episodes", "ls", "--png", str(tmp_path / "none.png"), "--robot", "nobody"]
    with pytest.raises(SystemExit, match="no episode matches"):
        cli.main([*empty, "--store", address])


def test_errors_are_one_line_with_the_status(address, capsys):
    assert cli.main(["episodes", "show", "missing", "--store", address]) == 1
    assert "NOT_FOUND: no episode 'missing' in the store" in capsys.readouterr().err


def test_console_script_is_installed():
    script = shutil.which("graspfleet") or shutil.which(".venv/bin/graspfleet")
    assert script, "pip install -e . should have installed the graspfleet console script"
    help_text = subprocess.run(
        [script, "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "episodes" in help_text and "store" in help_text


def test_the_run_report_draws_a_sheet_and_a_success_and_a_failure(address, tmp_path):
    from services.fleet import report

    channel, stub = client.connect(address)
    with channel:
        drawn = report.episode_pictures(stub, ["kuka-01", "kuka-02"], tmp_path)
    names = [p.name for p in drawn]
    assert names[0] == "episodes.png" and all(p.stat().st_size > 0 for p in drawn)
    assert set(names[1:]) <= {"episode-success.png", "episode-failure.png"} and names[1:]
