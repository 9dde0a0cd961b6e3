"""Farm-collected canonical images reach training data; `graspfleet refiner samples` draws Figure 1."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from graspfleet.v1 import common_pb2, episode_store_pb2, sim_farm_pb2, sim_farm_pb2_grpc
from models.episodes import dataset
from models.generators import export
from robots.canonical import classes_of
from services import cli
from services.common.images import decode_image
from services.episode_store import client
from services.episode_store.config import EpisodeStoreConfig
from services.episode_store.server import create_server as create_store
from services.refiner.samples import HEADER_PX
from services.sim_farm.config import SimFarmConfig
from services.sim_farm.server import create_server as create_farm
from tests.fixtures import refiner_models

Policy = sim_farm_pb2.CollectionPolicy
SIZE = 32  # image side of the collections
SHIFT = -0.7  # the test generator darkens: refined tiles differ from sim tiles


def _collect(stub, collection_id: str, domain: int, canonical: bool) -> None:
    spec = sim_farm_pb2.CollectionSpec(
        num_episodes=2,
        num_shards=1,
        max_steps=3,
        domain=domain,
        randomization=common_pb2.RANDOMIZATION_VISUAL,
        policy=Policy(kind=Policy.KIND_RANDOM),
        image_size=common_pb2.ImageSize(width=SIZE, height=SIZE),
        render_canonical=canonical,
        seed=3,
    )
    stub.StartCollection(
        sim_farm_pb2.StartCollectionRequest(spec=spec, collection_id=collection_id)
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store holding a simulated collection with canonical images and a proxy-real one."""
    root = tmp_path_factory.mktemp("samples")
    store = create_store(EpisodeStoreConfig(port=0, data_dir=str(root / "store")))
    farm = create_farm(
        SimFarmConfig(port=0, store_address=store.address, workers=2, spool_dir=str(root / "spool"))
    )
    try:
        with grpc.insecure_channel(farm.address) as channel:
            stub = sim_farm_pb2_grpc.SimFarmStub(channel)
            _collect(stub, "sim", common_pb2.DOMAIN_SIM, canonical=True)
            _collect(stub, "real", common_pb2.DOMAIN_REAL, canonical=False)
            deadline = time.monotonic() + 120
            for collection_id in ("sim", "real"):
                while True:
                    done = stub.GetCollection(
                        sim_farm_pb2.GetCollectionRequest(collection_id=collection_id)
                    )
                    if done.state == sim_farm_pb2.COLLECTION_STATE_SUCCEEDED:
                        break
                    assert done.state == sim_farm_pb2.COLLECTION_STATE_RUNNING or (
                        done.state == sim_farm_pb2.COLLECTION_STATE_PENDING
                    ), done.error
                    assert time.monotonic() < deadline, "collections did not finish"
                    time.sleep(0.2)
    finally:
        farm.stop(grace_s=0)
    yield store, root / "store"
    store.stop(grace_s=0)


def _episodes(address: str, collection_id: str) -> list:
    channel, stub = client.connect(address)
    with channel:
        flt = episode_store_pb2.EpisodeFilter(collection_id=collection_id)
        return list(client.list_all(stub, flt))


def _middle_images(address: str, collection_id: str) -> list[np.ndarray]:
    channel, stub = client.connect(address)
    with channel:
        images = []
        for summary in _episodes(address, collection_id):
            request = episode_store_pb2.GetEpisodeRequest(
                episode_id=summary.episode_id, include_steps=True
            )
            steps = stub.GetEpisode(request).steps
            images.append(decode_image(steps[len(steps) // 2].image))
        return images


def test_the_farm_stores_canonical_images_that_training_reads(store):
    server, data_root = store
    sim = _episodes(server.address, "sim")
    assert len(sim) == 2
    samples = list(
        dataset.step_dataset(
            data_root, sim, include_masks=True, include_canonical=True
        ).as_numpy_iterator()
    )
    assert len(samples) == sum(e.num_steps for e in sim)
    for sample in samples:
        for image, mask in (
            (dataset.X0_CANONICAL, dataset.X0_MASK),
            (dataset.CANONICAL, dataset.MASK),
        ):
            assert sample[image].shape == (SIZE, SIZE, 3) and sample[image].dtype == np.uint8
            # The canonical image is of the same frame: its classes are the frame's mask.
            np.testing.assert_array_equal(classes_of(sample[image]), sample[mask][..., 0])
        assert not np.array_equal(sample[dataset.XT], sample[dataset.CANONICAL])
    real = _episodes(server.address, "real")
    assert len(real) == 2 and real[0].domain == common_pb2.DOMAIN_REAL
    # Real episodes carry no canonical images: asking for them says so.
    with pytest.raises(tf.errors.InvalidArgumentError, match="no canonical images"):
        list(dataset.step_dataset(data_root, real, include_canonical=True).as_numpy_iterator())


def test_samples_grid_has_sim_refined_and_real_columns(store, tmp_path, capsys):
    server, _ = store
    models = tmp_path / "models"
    refiner_models.publish(models, export.KIND_GRASPGAN, shift=SHIFT)
    out = tmp_path / "grid.png"
    tile = 2 * SIZE
    argv = ["refiner", "samples", "--store", server.address, "--model-base", str(models)]
    assert cli.main([*argv, "--rows", "2", "--tile", str(tile), "--out", str(out)]) == 0
    assert "2 rows, graspgan version 1" in capsys.readouterr().out
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape == (HEADER_PX + 2 * tile, 3 * tile, 3)
    for row in range(2):
        top = HEADER_PX + row * tile
        # Tiles are nearest-neighbour enlargements: every second pixel is the image itself.
        sim, refined, real = (
            grid[top : top + tile : 2, column * tile : (column + 1) * tile : 2]
            for column in range(3)
        )
        assert any(np.array_equal(sim, image) for image in _middle_images(server.address, "sim"))
        assert any(np.array_equal(real, image) for image in _middle_images(server.address, "real"))
        assert np.abs(refined.astype(int) - refiner_models.expected(sim, SHIFT)).max() <= 1

    # No generator yet, or nothing real to compare with: a clear message, exit code 1.
    empty = tmp_path / "empty-models"
    assert cli.main([*argv[:-1], str(empty), "--out", str(tmp_path / "x.png")]) == 1
    assert "no usable graspgan generator" in capsys.readouterr().err
