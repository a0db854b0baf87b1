"""Both images build from their Dockerfiles, and stay a sane size."""

from __future__ import annotations

import pytest

from .conftest import REPORT, Images, MiB

# func_only: the session fixture that builds (minutes on a fresh machine) has its own limit.
pytestmark = [pytest.mark.images, pytest.mark.timeout(30, func_only=True)]

#: Measured 2026-12-01: gateway 258 MiB, operator 320 MiB (base image 190 MiB).
MAX_MIB = 600


def test_both_images_build_and_stay_small(images: Images) -> None:
    for image in (images.gateway, images.operator):
        mib = images.size(image) / MiB
        REPORT.append((f"{image} size", f"{mib:.0f} MiB"))
        print(f"{image}: {mib:.0f} MiB")
        assert mib < MAX_MIB, f"{image} is {mib:.0f} MiB, over {MAX_MIB} MiB"
        # Both run as the unprivileged user the Dockerfiles create, never as root.
        assert images.user(image) == "10001:10001"
