"""GPU training runs the GPU image: the component's trainer and the Jobs it creates, the
Dockerfile's stage that builds it and `make images`' way to build it."""

from __future__ import annotations

import re
import subprocess

from tests.k8s import kustomize
from tests.k8s import manifests as m

DOCKERFILE = kustomize.ROOT / "Dockerfile"


def _version() -> str:
    pyproject = (kustomize.ROOT / "pyproject.toml").read_text()
    (version,) = re.findall(r'^version = "([^"]+)"', pyproject, re.M)
    return version


def test_gpu_training_jobs_run_the_gpu_image_on_a_gpu(built):
    version = _version()
    for combination, objects in built.items():
        trainer = m.pod_spec(m.named(objects, "Deployment", "trainer"))["containers"][0]
        job = m.training_job(objects)["spec"]["template"]["spec"]
        (container,) = job["containers"]
        gpu = "gpu-training" in combination.components
        at = combination.name
        # Jobs run the image the trainer runs: the GPU one with the component, else the CPU one.
        assert container["image"] == trainer["image"] == m.env(trainer)["GRASPFLEET_K8S_IMAGE"], at
        assert m.repository(container["image"]) == (m.GPU_IMAGE if gpu else m.IMAGE), at
        assert container["image"].endswith(f":{version}"), at
        limits = container["resources"]["limits"]
        assert (limits.get("nvidia.com/gpu") == "1") == gpu, at
        if gpu:
            assert job["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, at
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in job[
                "tolerations"
            ], at


def test_the_fleet_pulls_the_gpu_image_from_its_registry(built):
    """Listed in the fleet overlay, the component's image gets the overlay's registry."""
    objects = built[kustomize.Combination("fleet", ("gpu-training",))]
    trainer = m.pod_spec(m.named(objects, "Deployment", "trainer"))["containers"][0]
    store = m.pod_spec(m.named(objects, "Deployment", "episode-store"))["containers"][0]
    registry = store["image"].rsplit("/", 1)[0]
    assert registry == "registry.example.com"
    assert trainer["image"] == f"{registry}/{m.GPU_IMAGE}:{_version()}"
    assert m.env(trainer)["GRASPFLEET_K8S_IMAGE"] == trainer["image"]


def test_the_dockerfile_builds_the_gpu_image():
    dockerfile = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", dockerfile, re.M)
    names = dict((name, base) for base, name in stages)
    # tensorflow[and-cuda] over the CPU build, TensorFlow pinned by constraints.txt.
    assert names["builder-gpu"] == "builder"
    gpu_stage = dockerfile.split("AS builder-gpu", 1)[1].split("\nFROM ", 1)[0]
    assert re.search(r'pip install .*-c constraints\.txt .*"tensorflow\[and-cuda\]"', gpu_stage)
    constraints = (kustomize.ROOT / "constraints.txt").read_text()
    assert re.search(r"^tensorflow==\d+\.\d+\.\d+$", constraints, re.M)
    runtime_gpu = dockerfile.split("AS runtime-gpu", 1)[1].split("\nFROM ", 1)[0]
    assert "COPY --from=builder-gpu /opt/graspfleet /opt/graspfleet" in runtime_gpu
    # The plain `docker build .` still makes the CPU image: runtime is the last stage.
    assert stages[-1] == ("runtime-base", "runtime")
    assert names["runtime-gpu"] == "runtime-base"


def test_make_images_builds_the_gpu_variant():
    result = subprocess.run(
        ["make", "-n", "images", "IMAGE_VARIANTS=cpu gpu"],
        cwd=kustomize.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    version = _version()
    assert f"build --target runtime-gpu -t {m.GPU_IMAGE}:{version} ." in result.stdout
    assert f"build --target runtime -t {m.IMAGE}:{version} ." in result.stdout
