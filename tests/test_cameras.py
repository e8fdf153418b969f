"""Camera-centred features against a per-camera loop."""
import pytest
import torch
import torch.nn.functional as F

from timm_gam.reid.cameras import camera_centred


def test_each_camera_mean_is_removed_then_rows_renormalised():
    generator = torch.Generator().manual_seed(0)
    embeddings = F.normalize(torch.randn(9, 4, generator=generator), dim=1)
    cameras = [3, 1, 3, 7, 1, 1, 3, 7, 7]
    expected = torch.empty_like(embeddings)
    for camera in set(cameras):
        rows = [i for i, c in enumerate(cameras) if c == camera]
        mean = embeddings[rows].mean(dim=0)
        for i in rows:
            expected[i] = (embeddings[i] - mean) / (embeddings[i] - mean).norm()
    torch.testing.assert_close(camera_centred(embeddings, cameras), expected)


def test_a_camera_offset_no_longer_separates_the_same_person():
    person = F.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(1)), dim=1)
    offset = torch.zeros(16)
    offset[0] = 3.0
    seen_by_two = torch.cat([person, person + offset])  # the same people, camera 2 adds a bias
    centred = camera_centred(seen_by_two, [1] * 5 + [2] * 5)
    torch.testing.assert_close(centred[:5], centred[5:], atol=1e-6, rtol=0)


def test_unknown_cameras_are_refused_with_the_fix():
    with pytest.raises(ValueError, match='camera in every file name'):
        camera_centred(torch.ones(2, 3), [0, -1])
    with pytest.raises(ValueError, match='one camera id per embedding'):
        camera_centred(torch.ones(2, 3), [0])
