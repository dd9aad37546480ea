"""docs/gallery/make_gallery.py, the one command behind the gallery, runs (quick mode: two
small crops) and its retention table says what the SoftPool paper found against max pooling."""
import importlib.util
import pathlib
import sys

import pytest

pytest.importorskip("skimage")
pytest.importorskip("matplotlib")
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _gallery():
    spec = importlib.util.spec_from_file_location(
        "make_gallery", ROOT / "docs" / "gallery" / "make_gallery.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_gallery"] = module
    spec.loader.exec_module(module)
    return module


def test_the_gallery_is_made_and_softpool_keeps_more_than_max(tmp_path):
    rows = _gallery().main(["--quick", "--out", str(tmp_path)])
    for name in ("pooling_camera.png", "pooling_astronaut.png", "maxent_lam.png",
                 "retention.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    table = {(image, factor, method): (psnr, ssim) for image, factor, method, psnr, ssim in rows}
    for (image, factor, method), (psnr, ssim) in table.items():
        if method == "SoftPool":
            max_psnr, max_ssim = table[image, factor, "max"]
            assert psnr > max_psnr and ssim > max_ssim, (image, factor)
            average_psnr = table[image, factor, "average"][0]
            assert psnr <= average_psnr + 1e-6  # the average is the least-squares reconstruction
