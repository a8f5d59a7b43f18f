"""The model zoo. Importing this package registers every architecture (explicit list)."""

from edgecnn.train.architectures import (  # noqa: F401
    airbench,
    alexnet,
    lenet,
    mobilenet,
    resnet,
    seed_cnn,
    shufflenet,
    vgg,
)
