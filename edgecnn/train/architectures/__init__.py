"""The model zoo. Importing this package registers every architecture (explicit list)."""

from edgecnn.train.architectures import (  # noqa: F401
    airbench,
    alexnet,
    anchorfree,
    lenet,
    mobilenet,
    resnet,
    seed_cnn,
    shufflenet,
    unet,
    vgg,
)
