import numpy as np

from lab2prod.models.data import digits_images


def test_digits_are_deterministic_and_split_disjointly():
    first, again = digits_images("test"), digits_images("test")
    train = digits_images("train")
    assert len(first) + len(train) == 1797
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))
    assert np.array_equal(first.labels, again.labels)
    assert set(first.labels.tolist()) == set(range(10))


def test_rendered_images_vary_in_size_aspect_and_colour():
    data = digits_images("test")
    sizes = {img.size for img in data.images}
    aspects = np.array([w / h for w, h in (img.size for img in data.images)])
    corners = {img.getpixel((0, 0)) for img in data.images}
    assert all(img.mode == "RGB" for img in data.images)
    assert len(sizes) > 100
    assert aspects.min() < 0.85 and aspects.max() > 1.35
    assert len(corners) > 100  # paper colour differs from image to image


def test_unknown_split_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="split='dev'"):
        digits_images("dev")
