import numpy as np
import pytest

pytestmark = pytest.mark.tf


def test_pipeline_normalizes_exactly_like_the_runtime(sample_data):
    from edgecnn.card import ModelCard
    from edgecnn.runtime.preprocess import normalize_batch
    from edgecnn.train.pipeline import make_dataset

    x, y = sample_data[0][:16], sample_data[1][:16]
    card = ModelCard(name="r", architecture="a", class_names=list("0123456789"), input_size=(32, 32),
                     mean=(103.9, 116.8, 123.7), std=(57.0, 58.0, 59.0), channel_order="BGR")
    ds = make_dataset(x, y, num_classes=10, batch_size=16, mean=card.mean, std=card.std, channel_order="BGR")
    images, labels = next(iter(ds))
    np.testing.assert_array_equal(images.numpy(), normalize_batch(x, card))
    np.testing.assert_array_equal(labels.numpy().argmax(1), y)


def test_augmentation_keeps_shapes_and_labels_and_changes_pixels(sample_data):
    from edgecnn.train.config import AugmentConfig
    from edgecnn.train.pipeline import make_dataset

    x, y = sample_data[0][:32], sample_data[1][:32]
    kw = dict(num_classes=10, batch_size=32, mean=(0, 0, 0), std=(255, 255, 255))
    aug = AugmentConfig(flip=True, rotation_deg=15, translate=0.125)
    images, labels = next(iter(make_dataset(x, y, training=True, augment=aug, seed=3, **kw)))
    plain, plain_labels = next(iter(make_dataset(x, y, seed=3, **kw)))
    assert images.shape == (32, 32, 32, 3)
    # shuffling reorders the batch, but augmentation never touches the labels
    assert sorted(labels.numpy().argmax(1)) == sorted(y)
    assert not np.allclose(np.sort(images.numpy().ravel()), np.sort(plain.numpy().ravel()))
    assert 0.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 1.0


def test_augment_config_validation():
    from edgecnn.errors import ConfigError
    from edgecnn.train.config import AugmentConfig

    with pytest.raises(ConfigError, match="translate"):
        AugmentConfig(translate=0.7)
