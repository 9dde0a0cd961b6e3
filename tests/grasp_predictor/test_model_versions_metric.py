"""graspfleet_predictor_model_versions tells a fleet with no model yet (0) from a model that
does not serve (GraspfleetPredictorNotServing stays quiet on the first, fires on the second)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from services.grasp_predictor.config import PredictorConfig
from services.grasp_predictor.server import Predictor


def versions(model: str) -> float | None:
    return REGISTRY.get_sample_value("graspfleet_predictor_model_versions", {"model": model})


def test_versions_on_disk_are_counted_whether_they_serve_or_not(tmp_path):
    predictor = Predictor(
        PredictorConfig(model_base_path=str(tmp_path), model_names=("grasp_metric",), settle_s=0)
    )
    (repo,) = predictor.repositories.values()
    assert versions("grasp_metric") == 0  # a new fleet: nothing trained yet
    assert not predictor.ready()

    # A version that cannot load (no SavedModel in it) still counts: there is a model, and
    # the predictor is not serving it.
    (tmp_path / "grasp_metric" / "1").mkdir(parents=True)
    (tmp_path / "grasp_metric" / "1" / "saved_model.pb").write_bytes(b"not a model")
    repo.poll()
    assert versions("grasp_metric") == 1
    assert not predictor.ready()
