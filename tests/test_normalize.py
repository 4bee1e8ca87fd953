"""Per-channel normalisation as dataset.json declares it: each scheme by value, and bad declarations."""

from __future__ import annotations

import numpy as np
import pytest

from cmfnet.data.normalize import normalize_channel, normalize_image
from cmfnet.data.preprocess import body_mask


def test_ct_window_clips_and_scales_to_unit_range() -> None:
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0])
    out = normalize_channel(hu, {"scheme": "ct", "window": [-160, 240]})
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])
    assert out.dtype == np.float32
    np.testing.assert_allclose(normalize_channel(hu, {"scheme": "ct"}), out)  # the default window


def test_zscore_over_the_whole_volume_is_the_default() -> None:
    rng = np.random.default_rng(0)
    mr = rng.normal(300.0, 40.0, size=(4, 8, 8))
    for spec in (None, {"scheme": "zscore"}):
        out = normalize_channel(mr, spec)
        assert abs(float(out.mean())) < 1e-4 and abs(float(out.std()) - 1.0) < 1e-4


def test_zscore_with_percentile_clipping_and_a_nonzero_mask() -> None:
    mr = np.zeros((10, 10), np.float32)
    mr[2:8, 2:8] = np.arange(36, dtype=np.float32).reshape(6, 6)
    mr[2, 2] = 10_000.0  # one bright outlier, clipped by the percentiles
    out = normalize_channel(mr, {"scheme": "zscore", "clip_percentiles": [0, 95], "mask": "nonzero"})
    inside = mr != 0
    assert (out[~inside] == 0).all()  # air stays 0
    assert abs(float(out[inside].mean())) < 1e-5 and abs(float(out[inside].std()) - 1.0) < 1e-4
    assert out.max() == out[2, 2]  # the outlier is clipped to the 95th percentile, not dropped
    ranks = np.argsort(out[inside][1:])  # the other voxels keep their order
    assert (np.diff(mr[inside][1:][ranks]) >= 0).all()


def test_a_constant_or_empty_channel_gives_no_nan() -> None:
    for array in (np.full((3, 3), 7.0), np.zeros((3, 3))):
        out = normalize_channel(array, {"scheme": "zscore", "mask": "nonzero"})
        assert np.isfinite(out).all() and (out == 0).all()


def test_none_keeps_the_values_and_the_input_is_never_changed() -> None:
    array = np.array([[1, 2], [3, 4]], dtype=np.int16)
    out = normalize_channel(array, {"scheme": "none"})
    assert out.dtype == np.float32 and (out == array).all()
    out[0, 0] = 99
    assert array[0, 0] == 1


def test_image_channels_follow_their_own_declaration_by_name() -> None:
    image = np.stack([np.array([[-160.0, 240.0]]), np.array([[5.0, 6.0]])])
    out = normalize_image(image, ["CT", "T1c"], {"CT": {"scheme": "ct", "window": [-160, 240]},
                                                  "T1c": {"scheme": "none"}})
    np.testing.assert_allclose(out, [[[0.0, 1.0]], [[5.0, 6.0]]])
    np.testing.assert_allclose(normalize_image(image, ["CT", "MR"], None)[0], [[-1.0, 1.0]])  # zscore


@pytest.mark.parametrize(("spec", "message"), [
    ({"scheme": "minmax"}, "unknown normalisation scheme 'minmax'"),
    ({"scheme": "zscore", "mask": "brain"}, "unknown z-score mask .brain.")])
def test_an_unknown_declaration_is_refused(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_channel(np.ones((2, 2)), spec)


def test_a_body_mask_takes_the_statistics_from_the_body_found_in_every_channel() -> None:
    """The body comes from all channels (CT > -500 HU, MR above Otsu's threshold); the MR's noisy
    air neither sets the statistics nor is zeroed, and how much air the field of view holds no
    longer moves the tissue."""
    rng = np.random.default_rng(1)
    z_scored = []
    for air_columns in (4, 12):
        ct = np.full((4, 16, 16), -1000.0)
        ct[:, :, air_columns:] = 40.0
        mr = rng.normal(20.0, 5.0, ct.shape)  # air: noise, not a fill
        mr[:, :, air_columns:] = rng.normal(300.0, 30.0, (4, 16, 16 - air_columns))
        spec = {"CT": {"scheme": "ct"}, "MR": {"scheme": "zscore", "mask": "body"}}
        out = normalize_image(np.stack([ct, mr]), ["CT", "MR"], spec)[1]
        body = body_mask([ct, mr], ["ct", "mr"])
        assert body[ct > -500].all() and body.sum() < (ct > -500).sum() + 8  # the body, give a noisy voxel
        assert abs(float(out[body].mean())) < 1e-4 and abs(float(out[body].std()) - 1.0) < 1e-3
        assert (out[~body] < -5).all()  # air z-scored with the body's statistics, not set to 0
        z_scored.append(out[:, :, 12:].mean())
    assert abs(z_scored[0] - z_scored[1]) < 0.1  # the same tissue, whatever the air
    whole = [normalize_channel(np.where(np.arange(16) >= a, 300.0, 20.0), None).max() for a in (4, 12)]
    assert abs(whole[0] - whole[1]) > 0.5  # a whole-volume z-score moves the tissue with the air
    with pytest.raises(ValueError, match=r"^z-score mask 'body' needs the whole image: use normalize_image$"):
        normalize_channel(np.ones((2, 2)), {"scheme": "zscore", "mask": "body"})


def test_a_ct_channel_finds_the_body_by_hounsfield_units_not_by_otsu() -> None:
    """Lung-like tissue at -450 HU is body by the CT threshold (-500 HU), though Otsu's threshold on
    the noisy CT would cut it off (it falls between -450 and 40 HU here); the MR's z-score takes its
    statistics from that body. Fails when the CT channel is handed to body_mask as an MR one."""
    rng = np.random.default_rng(2)
    ct = rng.normal(-1000.0, 20.0, (4, 16, 16))  # noisy air: no constant fill
    ct[:, :, 2:8] = -450.0
    ct[:, :, 8:] = 40.0
    mr = rng.normal(20.0, 5.0, ct.shape)  # air and lung are dark on MR
    mr[:, :, 8:] = rng.normal(300.0, 30.0, (4, 16, 8))
    spec = {"CT": {"scheme": "ct"}, "MR": {"scheme": "zscore", "mask": "body"}}
    out = normalize_image(np.stack([ct, mr]), ["CT", "MR"], spec)[1]
    body = ct > -500
    np.testing.assert_array_equal(body_mask([ct, mr], ["ct", "mr"]), body)
    assert abs(float(out[body].mean())) < 1e-4 and abs(float(out[body].std()) - 1.0) < 1e-3


@pytest.mark.parametrize("spec", [None, {"scheme": "ct"}, {"scheme": "zscore", "mask": "nonzero"},
                                  {"scheme": "zscore", "mask": "body"}, {"scheme": "none"}])
def test_every_scheme_returns_float32(spec: dict | None) -> None:
    """Networks and the sliding window expect float32; a float64 channel doubles the memory of
    every case."""
    image = np.random.default_rng(3).normal(100.0, 50.0, (1, 4, 16, 16)).astype(np.int16)
    assert normalize_image(image, ["X"], {"X": spec} if spec else None).dtype == np.float32


def test_a_body_mask_on_every_channel_is_found_without_a_ct() -> None:
    """A one-channel MR dataset that declares the body mask: the body comes from the MR alone (its
    air is a constant fill here), and the statistics from that body."""
    mr = np.zeros((4, 16, 16))
    mr[:, :, 6:] = np.random.default_rng(4).normal(300.0, 30.0, (4, 16, 10))
    out = normalize_image(mr[None], ["MR"], {"MR": {"scheme": "zscore", "mask": "body"}})[0]
    body = mr > 0
    assert abs(float(out[body].mean())) < 1e-4 and abs(float(out[body].std()) - 1.0) < 1e-3
