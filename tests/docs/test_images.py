"""The images docs/guide.md shows come from the code that a test runs (tests/xbarlab/
live_support.py: `docs_images`, also behind `make docs-images`)."""

import re
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "xbarlab"))
from live_support import DOCS_IMAGES, chromium_missing, docs_images  # noqa: E402


def test_guide_shows_the_generated_images():
    shown = set(re.findall(r"\]\(img/([^)]+\.png)\)", (ROOT / "docs" / "guide.md").read_text()))
    assert set(DOCS_IMAGES) <= shown
    for name in DOCS_IMAGES:
        img = mpimg.imread(ROOT / "docs" / "img" / name)
        assert img.shape[0] > 300 and img.shape[1] > 400 and img.std() > 0.01, name


@pytest.mark.browser
@pytest.mark.skipif(chromium_missing() is not None,
                    reason=f"no headless browser: {chromium_missing()}")
def test_docs_images_are_made_by_the_tested_code(tmp_path):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        made = docs_images(tmp_path, devices=6, mid=0.5)
    assert sorted(p.name for p in made) == sorted(DOCS_IMAGES)
    live = mpimg.imread(tmp_path / "live-view.png")
    assert live.shape[0] > 1000  # the whole page: status, maps, trace and every figure
    for p in made:
        assert mpimg.imread(p).std() > 0.01
