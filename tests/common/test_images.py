"""Image messages: a damaged PNG is an INVALID_ARGUMENT wherever it is decoded."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.common.images import check_image, decode_image
from tests.fixtures.images import damaged_png


@pytest.mark.parametrize("kind", ["truncated", "bit-flip"])
def test_a_damaged_png_whose_header_reads_is_found_by_decoding(kind):
    image = damaged_png(kind)
    check_image("x", image, channels=3, max_side=64)  # the header alone looks fine
    with pytest.raises(InvalidArgument, match="x: the image data is damaged"):
        decode_image(image, "x")
