"""Exported generators: the serving signature, the metadata, atomic numbered versions."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import tensorflow as tf

from models import registry
from models.generators import export
from models.generators.networks import GeneratorConfig, build_generator
from models.registry import versions


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(model_base, version folder) of an untrained tiny GraspGAN generator."""
    base = tmp_path_factory.mktemp("models")
    generator = build_generator(GeneratorConfig.tiny())
    path = export.export_generator(
        generator, base, "graspgan", export.KIND_GRASPGAN, (64, 64), {"training": {"steps": 0}}
    )
    return base, path


@pytest.fixture(scope="module")
def signature(published):
    return tf.saved_model.load(str(published[1])).signatures[export.SIGNATURE_KEY]


@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 17, 23), (2, 64, 80)])
def test_signature_returns_uint8_images_and_masks_of_the_input_size(signature, shape):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    outputs = signature(**{export.INPUT_IMAGES: tf.constant(images)})
    refined, masks = outputs[export.OUTPUT_IMAGES], outputs[export.OUTPUT_MASKS]
    assert refined.dtype == tf.uint8 and refined.shape == (*shape, 3)
    assert masks.dtype == tf.uint8 and masks.shape == shape
    assert set(np.unique(masks.numpy())) <= {0, 1, 2, 3}
    # An untrained residual generator is the identity, up to rounding.
    assert np.abs(refined.numpy().astype(int) - images).max() <= 1


def test_signature_refuses_images_below_the_minimum(signature):
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 16x16"):
        signature(**{export.INPUT_IMAGES: tf.zeros([1, 15, 40, 3], tf.uint8)})


def test_metadata_records_kind_size_generator_and_training(published):
    _, path = published
    metadata = json.loads((path / registry.METADATA_FILE).read_text())
    assert metadata["format_version"] == 1
    assert metadata["kind"] == "graspgan" and metadata["name"] == "graspgan"
    assert metadata["image_size"] == [64, 64]
    assert metadata["generator"]["name"] == "tiny" and metadata["generator"]["residual"]
    assert metadata["training"] == {"steps": 0}
    assert metadata["created_at"].endswith("+00:00")
    assert metadata["signature"]["outputs"][export.OUTPUT_MASKS] == "uint8 [N, H, W]"


def test_export_is_atomic_and_numbers_versions(tmp_path):
    generator = build_generator(GeneratorConfig.tiny(residual=False))
    model_dir = tmp_path / "rcan"
    (model_dir / ".tmp-stale").mkdir(parents=True)  # a crashed export: ignored
    seen_incomplete: list[str] = []
    done = threading.Event()

    def watch() -> None:  # a reader polling the folder, as the model repository does
        while not done.is_set():
            for version in versions(model_dir):
                folder = model_dir / str(version)
                if (
                    not (folder / "saved_model.pb").is_file()
                    or not (folder / registry.METADATA_FILE).is_file()
                ):
                    seen_incomplete.append(folder.name)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        first = export.export_generator(generator, tmp_path, "rcan", export.KIND_RCAN, (32, 48))
        second = export.export_generator(generator, tmp_path, "rcan", export.KIND_RCAN, (32, 48))
    finally:
        done.set()
        watcher.join()
    assert (first.name, second.name) == ("1", "2") and not seen_incomplete
    assert sorted(p.name for p in model_dir.iterdir()) == [".tmp-stale", "1", "2"]
    metadata = json.loads((second / registry.METADATA_FILE).read_text())
    assert metadata["kind"] == "rcan" and metadata["training"] == {}


def test_bad_exports_are_refused_and_leave_nothing(tmp_path):
    generator = build_generator(GeneratorConfig.tiny())
    with pytest.raises(ValueError, match="kind 'cyclegan'"):
        export.export_generator(generator, tmp_path, "g", "cyclegan", (64, 64))
    with pytest.raises(ValueError, match="16px minimum"):
        export.export_generator(generator, tmp_path, "g", export.KIND_GRASPGAN, (8, 64))
    with pytest.raises(ValueError, match="reserved"):
        export.export_generator(
            generator, tmp_path, "g", export.KIND_GRASPGAN, (64, 64), {"kind": "rcan"}
        )
    assert versions(tmp_path / "g") == []
