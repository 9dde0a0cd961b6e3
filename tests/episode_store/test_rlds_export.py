"""`graspfleet episodes export` and `import`: an RLDS dataset that TFDS and plain tf.data read as
the store has it, and that an empty store ingests back into the same episodes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from graspfleet.v1 import common_pb2, episode_store_pb2
from models.episodes import rlds
from models.episodes.shards import EVALUATION, PURPOSE
from models.episodes.synthetic import sample_episode
from services import cli
from services.common.auth import bearer
from services.episode_store import client
from services.episode_store.client import rlds_export, rlds_import
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server

TOKEN = "export-test-token"
JPEG, PNG = common_pb2.Image.ENCODING_JPEG, common_pb2.Image.ENCODING_PNG


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Five episodes of 2 to 4 steps, JPEG and PNG: one carrying model predictions, one
    relabeled, one of a closed-loop evaluation."""
    data_dir = tmp_path_factory.mktemp("store")
    server = create_server(
        EpisodeStoreConfig(port=0, data_dir=str(data_dir), grace_s=0, auth_token=TOKEN)
    )
    channel, stub = client.connect(server.address)
    with channel:
        for seed in range(5):
            record = sample_episode(seed, num_steps=2 + seed % 3, encoding=(JPEG, PNG)[seed % 2])
            if seed == 1:
                for step in record.steps:
                    step.predicted_success = 0.25 + 0.1 * step.index
                record.header.model.CopyFrom(common_pb2.ModelRef(name="grasp_success", version=3))
            if seed == 4:
                record.header.attributes[PURPOSE] = EVALUATION
            client.write_episode(stub, record)
        stub.Relabel(
            episode_store_pb2.RelabelRequest(
                episode_id="sample-2", success=True, reason="seen on video", source="user:ana"
            ),
            metadata=bearer(TOKEN),
        )
        yield server, stub
    server.stop(grace_s=0)


def _export(store, out: Path, *flags: str) -> None:
    server, _ = store
    assert cli.main(["episodes", "export", str(out), "--store", server.address, *flags]) == 0


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_tfds_reads_every_step_as_the_store_has_it(store, tmp_path):
    _, stub = store
    _export(store, tmp_path / "rlds", "--episodes-per-shard", "2")
    builder = tfds.builder_from_directory(str(tmp_path / "rlds"))
    assert builder.info.splits["train"].num_examples == 5
    keep_bytes = {
        "steps": {"observation": {"image": tfds.decode.SkipDecoding()}},
        "episode_metadata": {"x0": tfds.decode.SkipDecoding()},
    }
    seen = []
    for episode in tfds.as_numpy(builder.as_dataset(split="train", decoders=keep_bytes)):
        meta = episode["episode_metadata"]
        stored = stub.GetEpisode(
            episode_store_pb2.GetEpisodeRequest(
                episode_id=meta["episode_id"].decode(), include_steps=True
            )
        )
        seen.append(meta["episode_id"].decode())
        assert meta["x0"] == stored.header.x0.data
        assert meta["success"] == stored.summary.label.success
        assert meta["label_source"].decode() == stored.summary.label.source
        assert meta["model_version"] == stored.header.model.version
        steps = list(episode["steps"])
        assert len(steps) == len(stored.steps)
        for t, (step, want) in enumerate(zip(steps, stored.steps, strict=True)):
            assert step["observation"]["image"] == want.image.data  # not re-encoded
            p = want.pose.position_m
            np.testing.assert_allclose(
                step["observation"]["pose"],
                [p.x, p.y, p.z, want.pose.yaw_rad, want.pose.gripper_closure],
                rtol=1e-6,
            )
            m = want.command.motion
            np.testing.assert_allclose(
                step["action"], [m.dx_cm, m.dy_cm, m.dz_cm, m.sin_dyaw, m.cos_dyaw], rtol=1e-6
            )
            predicted = want.predicted_success if want.HasField("predicted_success") else -1.0
            assert step["predicted_success"] == pytest.approx(predicted)
            assert (step["is_first"], step["is_last"]) == (t == 0, t == len(steps) - 1)
            success = stored.outcome.result == common_pb2.GRASP_RESULT_SUCCESS
            assert step["reward"] == float(success and t == len(steps) - 1)
    assert seen == [f"sample-{i}" for i in range(5)]  # ingest order
    relabeled = next(
        e
        for e in tfds.as_numpy(builder.as_dataset(split="train", decoders=keep_bytes))
        if e["episode_metadata"]["episode_id"] == b"sample-2"
    )["episode_metadata"]
    assert relabeled["label_state"] == b"relabeled" and relabeled["label_source"] == b"user:ana"

    # Plain tf.data and protobuf, no TFDS: the shards are TFRecords of tf.train.Examples.
    shards = sorted(str(p) for p in (tmp_path / "rlds").glob("*.tfrecord-*"))
    assert len(shards) == 3
    for record in tf.data.TFRecordDataset(shards):
        features = tf.train.Example.FromString(record.numpy()).features.feature
        (episode_id,) = features["episode_metadata/episode_id"].bytes_list.value
        stored = stub.GetEpisode(
            episode_store_pb2.GetEpisodeRequest(episode_id=episode_id.decode(), include_steps=True)
        )
        images = list(features["steps/observation/image"].bytes_list.value)
        assert images == [step.image.data for step in stored.steps]
        actions = np.reshape(features["steps/action"].float_list.value, (-1, 5))
        want = [[s.command.motion.dx_cm, s.command.motion.dy_cm] for s in stored.steps]
        np.testing.assert_allclose(actions[:, :2], want, rtol=1e-6)
        (success,) = features["episode_metadata/success"].int64_list.value
        assert success == stored.summary.label.success


def test_an_export_is_byte_stable_and_a_stopped_one_resumes(store, tmp_path):
    _, stub = store
    _export(store, tmp_path / "a", "--episodes-per-shard", "2")
    _export(store, tmp_path / "b", "--episodes-per-shard", "2")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")

    def stop_after_three(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rlds_export.export(
            stub,
            episode_store_pb2.EpisodeFilter(),
            tmp_path / "c",
            episodes_per_shard=2,
            on_episode=stop_after_three,
        )
    resumed = rlds_export.export(
        stub, episode_store_pb2.EpisodeFilter(), tmp_path / "c", episodes_per_shard=2
    )
    assert (resumed.episodes, resumed.added) == (5, 3)  # the first closed shard was kept
    assert _digest(tmp_path / "c") == _digest(tmp_path / "a")

    # Stopped before its first shard closed: the folder is still the export's to resume.
    def stop_at_once(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rlds_export.export(
            stub,
            episode_store_pb2.EpisodeFilter(),
            tmp_path / "d",
            episodes_per_shard=2,
            on_episode=stop_at_once,
        )
    rlds_export.export(
        stub, episode_store_pb2.EpisodeFilter(), tmp_path / "d", episodes_per_shard=2
    )
    assert _digest(tmp_path / "d") == _digest(tmp_path / "a")


def test_an_export_takes_the_filters_of_episodes_ls(store, tmp_path):
    _export(store, tmp_path / "train", "--purpose", "training")
    _export(store, tmp_path / "eval", "--purpose", "evaluation", "--since", "2020-01-01")
    _export(store, tmp_path / "none", "--until", "2001-01-01")
    counts = {
        name: tfds.builder_from_directory(str(tmp_path / name)).info.splits["train"].num_examples
        for name in ("train", "eval", "none")
    }
    assert counts == {"train": 4, "eval": 1, "none": 0}


def test_an_export_refuses_a_folder_it_would_mix_with(store, tmp_path):
    _, stub = store
    _export(store, tmp_path / "sim", "--domain", "sim")
    with pytest.raises(rlds_export.ExportRefused, match="another filter"):
        rlds_export.export(stub, episode_store_pb2.EpisodeFilter(), tmp_path / "sim")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(rlds_export.ExportRefused, match="not empty"):
        rlds_export.export(stub, episode_store_pb2.EpisodeFilter(), tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def _float32(message) -> None:
    """Rounds every pose and motion double to float32, as an RLDS dataset holds them."""
    for pose in (
        getattr(message, name) for name in ("pose", "final_pose") if hasattr(message, name)
    ):
        for holder, names in ((pose.position_m, "xyz"), (pose, ("yaw_rad", "gripper_closure"))):
            for name in names:
                setattr(holder, name, float(np.float32(getattr(holder, name))))
    if hasattr(message, "command"):
        motion = message.command.motion
        for name in rlds.MOTION_FIELDS:
            setattr(motion, name, float(np.float32(getattr(motion, name))))


def _comparable(response) -> tuple:
    """What an export carries of a stored episode (masks and canonical renders are not)."""
    header = common_pb2.EpisodeHeader()
    header.CopyFrom(response.header)
    header.ClearField("x0_mask")
    header.ClearField("x0_canonical")
    steps = []
    for step in response.steps:
        copy = common_pb2.Step()
        copy.CopyFrom(step)
        copy.ClearField("mask")
        copy.ClearField("canonical")
        _float32(copy)
        steps.append(copy.SerializeToString(deterministic=True))
    label = response.summary.label
    outcome = common_pb2.EpisodeOutcome()
    outcome.CopyFrom(response.outcome)
    _float32(outcome)
    return (
        header.SerializeToString(deterministic=True),
        steps,
        outcome.SerializeToString(deterministic=True),
        (label.state, label.success, label.source),
    )


def test_an_import_of_an_export_reproduces_the_episodes(store, tmp_path):
    server, stub = store
    _export(store, tmp_path / "rlds")
    empty = create_server(
        EpisodeStoreConfig(port=0, data_dir=str(tmp_path / "b"), grace_s=0, auth_token=TOKEN)
    )
    try:
        args = ["episodes", "import", str(tmp_path / "rlds"), "--store", empty.address]
        assert cli.main([*args, "--token", TOKEN]) == 0
        assert cli.main([*args, "--token", TOKEN]) == 0  # again: every episode already there
        channel, copy = client.connect(empty.address)
        with channel:
            for i in range(5):
                request = episode_store_pb2.GetEpisodeRequest(
                    episode_id=f"sample-{i}", include_steps=True
                )
                assert _comparable(copy.GetEpisode(request)) == _comparable(
                    stub.GetEpisode(request)
                )
            assert copy.Stats(episode_store_pb2.StatsRequest()).episodes == 5
    finally:
        empty.stop(grace_s=0)


def test_an_import_names_the_fields_it_refuses(store, tmp_path):
    # A dataset with a depth image the store has no place for, and no outcome detail.
    features = rlds.features(None, None)
    steps = dict(features["steps"].feature)
    steps["observation"] = {
        **features["steps"].feature["observation"],
        "depth": tfds.features.Image(shape=(None, None, 1)),
    }
    meta = {k: v for k, v in features["episode_metadata"].items() if k != "outcome_detail"}
    other = tfds.features.FeaturesDict(
        {"steps": tfds.features.Dataset(steps), "episode_metadata": meta}
    )
    info = tfds.core.DatasetInfo(
        builder=tfds.core.DatasetIdentity(
            name="other_fleet",
            version=tfds.core.Version("1.0.0"),
            data_dir=str(tmp_path / "other"),
            module_name="other",
        ),
        features=other,
    )
    (tmp_path / "other").mkdir()
    writer = tfds.core.SequentialWriter(info, max_examples_per_shard=10)
    writer.initialize_splits(["train"])
    writer.close_all()
    _, stub = store
    with pytest.raises(rlds_import.ImportRefused) as refused:
        rlds_import.import_dataset(stub, tmp_path / "other")
    message = str(refused.value)
    assert "missing episode_metadata/outcome_detail" in message
    assert "no place in the store for steps/observation/depth" in message
