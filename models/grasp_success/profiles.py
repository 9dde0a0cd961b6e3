"""Network profiles of the grasp-success model: small for CPU by default, the paper's for GPUs.

A profile fixes what a trained model depends on: the episode image size it
expects, the square crop it sees (random in training, centred in serving) and
the layer sizes. `default` runs on a 2-core CPU with 64x64 episodes (and
`default-average` is its globally pooled variant); `paper`
is Levine et al.'s grasping network as drawn in the GraspGAN paper's Fig. 4c
(C1: 7 conv layers before the motion merge, C2: 9 after, 64 filters each) on
640x512 renders cropped to 472x472. Switching is one name: `profile("paper")`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

READOUTS = ("average", "keypoints")


@dataclass(frozen=True)
class ConvSpec:
    """One convolution (then batch norm and ReLU), optionally followed by max pooling.

    Attributes:
        filters: Output channels.
        kernel: Square kernel side, pixels.
        stride: Convolution stride.
        pool: Max-pooling window and stride after the layer; 1 for none.
    """

    filters: int
    kernel: int
    stride: int = 1
    pool: int = 1

    def __post_init__(self) -> None:
        if min(self.filters, self.kernel, self.stride, self.pool) < 1:
            raise ValueError(f"{self}: filters, kernel, stride and pool must be at least 1")


@dataclass(frozen=True)
class Profile:
    """Sizes of the grasp-success network and of the images it is trained on.

    Attributes:
        name: Registry name, recorded in each exported model's metadata.
        image_height: Height of the episode images the model is trained on, pixels.
        image_width: Width of those images, pixels.
        crop_size: Side of the square crop the network sees.
        trunk: Conv layers over x0 and xt stacked as 6 channels (C1, before the merge).
        head: Conv layers after the motion embedding is added (C2).
        dense_units: Fully connected layers before the single output.
        readout: How C2's last feature map becomes the dense layers' input:
            "average" pools it globally (position is lost); "keypoints" takes each
            channel's expected image position under a spatial softmax (Levine,
            Finn et al.'s visuomotor networks) and appends the motion embedding,
            so the dense layers can relate where things are to where v goes.
        domain_units: Layers of the DANN domain classifier (Ganin et al.: two of 100).
        bn_momentum: Moving-average momentum of every batch norm layer.
        bn_epsilon: Variance epsilon of every batch norm layer.
    """

    name: str
    image_height: int
    image_width: int
    crop_size: int
    trunk: tuple[ConvSpec, ...]
    head: tuple[ConvSpec, ...]
    dense_units: tuple[int, ...]
    domain_units: tuple[int, ...] = (100, 100)
    readout: str = "average"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3

    def __post_init__(self) -> None:
        if not self.trunk or not self.head:
            raise ValueError(f"profile {self.name!r}: trunk and head need conv layers")
        if self.crop_size > min(self.image_height, self.image_width):
            raise ValueError(
                f"profile {self.name!r}: crop_size {self.crop_size} exceeds the "
                f"{self.image_width}x{self.image_height} images"
            )
        if self.readout not in READOUTS:
            raise ValueError(
                f"profile {self.name!r}: readout {self.readout!r}; use one of {READOUTS}"
            )
        if not 0.0 <= self.bn_momentum < 1.0:
            raise ValueError(f"profile {self.name!r}: bn_momentum must be in [0, 1)")

    @property
    def motion_units(self) -> int:
        """Width of the motion embedding: it is added to the trunk's last feature map."""
        return self.trunk[-1].filters


# The CPU default reads C2's 14x14 map out as keypoints (Profile.readout; the
# comparison with the pooled "default-average" is in docs/results.md).
DEFAULT = Profile(
    name="default",
    image_height=64,
    image_width=64,
    crop_size=56,
    trunk=(ConvSpec(32, 5, stride=2), ConvSpec(32, 3, pool=2)),
    head=(ConvSpec(32, 3), ConvSpec(32, 3)),
    dense_units=(64,),
    readout="keypoints",
)

# The same sizes with a global average pool after C2 (and one more pooling
# layer), kept to reproduce the comparison.
DEFAULT_AVERAGE = dataclasses.replace(
    DEFAULT,
    name="default-average",
    head=(ConvSpec(32, 3, pool=2), ConvSpec(32, 3)),
    readout="average",
)

# Levine et al. (IJRR 2017), Fig. 4c of the GraspGAN paper: conv1 6x6/2 and a
# 3x3 pool, six 5x5 convs and a pool, the motion merge, six 3x3 convs, a pool,
# three 3x3 convs, two 64-unit dense layers.
PAPER = Profile(
    name="paper",
    image_height=512,
    image_width=640,
    crop_size=472,
    trunk=(ConvSpec(64, 6, stride=2, pool=3), *[ConvSpec(64, 5)] * 5, ConvSpec(64, 5, pool=3)),
    head=(*[ConvSpec(64, 3)] * 5, ConvSpec(64, 3, pool=2), *[ConvSpec(64, 3)] * 3),
    dense_units=(64, 64),
    bn_momentum=0.99,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (DEFAULT, DEFAULT_AVERAGE, PAPER)}


def profile(name: str) -> Profile:
    """The registered profile called `name`.

    Raises:
        ValueError: no profile has that name.
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None
