import torch
from PIL import Image
from torchvision.transforms import v2

from lab2prod.kinds.transforms import (
    DIGITS_INPUT_SIZE,
    DIGITS_MEAN,
    DIGITS_STD,
    digits_lab_transform,
    imagenet_lab_transform,
)
from lab2prod.models.data import digits_images


def test_digits_mean_std_constants_match_the_training_data():
    transform = digits_lab_transform(normalize=False)
    images = torch.stack([transform(img) for img in digits_images("train").images])
    assert torch.allclose(images.mean((0, 2, 3)), torch.tensor(DIGITS_MEAN), atol=1e-3)
    assert torch.allclose(images.std((0, 2, 3)), torch.tensor(DIGITS_STD), atol=1e-3)


def test_lab_transform_shape_and_normalization():
    images = digits_images("test").images[:200]
    batch = torch.stack([digits_lab_transform()(img) for img in images])
    assert batch.shape == (200, 3, DIGITS_INPUT_SIZE, DIGITS_INPUT_SIZE)
    assert batch.dtype == torch.float32
    assert abs(float(batch.mean())) < 0.2 and 0.7 < float(batch.std()) < 1.3


def test_a_square_resize_changes_what_the_model_sees():
    wide = next(img for img in digits_images("test").images if img.size[0] / img.size[1] > 1.3)
    lab = digits_lab_transform()(wide)
    squashed = v2.Compose([v2.ToImage(), v2.Resize((DIGITS_INPUT_SIZE, DIGITS_INPUT_SIZE)),
                           v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(DIGITS_MEAN, DIGITS_STD)])(wide)
    assert float((lab - squashed).abs().max()) > 0.5


def test_imagenet_transform_keeps_aspect_then_crops():
    out = imagenet_lab_transform()(Image.new("RGB", (640, 300), (128, 64, 32)))
    assert out.shape == (3, 224, 224)
