import numpy as np
import pytest

pytestmark = pytest.mark.tf

REQUIRED = {"seed_cnn", "lenet5", "alexnet", "alexnet_224", "vgg_small", "resnet20", "resnet56", "mobilenet_v2",
            "mobilenet_v2_224", "shufflenet_v2", "shufflenet_v2_224"}


def test_zoo_has_the_required_models_and_a_tiny_variant_per_family():
    from edgecnn.train.registry import get_model_spec, list_models

    names = set(list_models())
    assert REQUIRED <= names
    families = {get_model_spec(n).family for n in names}
    assert all(any(n.endswith("_tiny") and get_model_spec(n).family == f for n in names) for f in families)


def test_unknown_name_suggests_close_matches_without_autocorrecting():
    from edgecnn.errors import ModelNotFoundError
    from edgecnn.train.registry import get_model_spec

    with pytest.raises(ModelNotFoundError, match="Did you mean: resnet20"):
        get_model_spec("resnet2")


def test_duplicate_registration_is_an_error():
    from edgecnn.train.registry import register_model

    with pytest.raises(ValueError, match="already registered"):
        register_model("seed_cnn", input_size=(32, 32), family="seed")(lambda n: None)


def test_a_spec_says_which_options_its_builder_takes():
    """Read once at registration (timm's typed config): the CLI never inspects a builder itself."""
    from edgecnn.train.registry import get_model_spec

    resnet20, fixed, kwargs = (get_model_spec(n) for n in ("resnet20", "resnet20_w2", "seed_cnn_tiny"))
    assert resnet20.takes("width") and resnet20.takes("dropout") and not resnet20.takes("input_shape")
    assert not fixed.takes("width") and fixed.takes("dropout")  # its width is the point of its name
    assert kwargs.any_option and kwargs.takes("width")  # a builder taking **kwargs takes anything


def test_seed_cnn_is_the_tutorial_network():
    from edgecnn.train.registry import build_model

    m = build_model("seed_cnn", 10)
    kinds = [type(layer).__name__ for layer in m.layers[1:]]
    assert kinds == ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D", "Flatten", "Dense", "Dense",
                     "Activation"]
    assert [m.get_layer(n).filters for n in ("conv1", "conv2", "conv3")] == [32, 64, 64]
    assert m.get_layer("features").units == 64
    assert m.count_params() == 122_570  # the tutorial's model.summary() total


@pytest.mark.parametrize("name", ["seed_cnn_tiny", "lenet5_tiny", "alexnet_tiny", "vgg_tiny", "resnet_tiny",
                                  "mobilenet_v2_tiny", "shufflenet_v2_tiny"])
def test_tiny_models_output_probabilities(name):
    from edgecnn.train.registry import build_model

    m = build_model(name, 3)
    p = np.asarray(m(np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")))
    assert p.shape == (2, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    assert m.get_layer("logits") is not None and m.input.name == "images"


def test_width_multiplier_and_larger_inputs():
    from edgecnn.train.flops import model_summary_row
    from edgecnn.train.registry import build_model

    small = model_summary_row(build_model("mobilenet_v2", 10, width=0.5))
    full = model_summary_row(build_model("mobilenet_v2", 10))
    assert small["params"] < full["params"] and small["mflops"] < full["mflops"]
    big = build_model("shufflenet_v2_224", 10, input_size=(96, 96))
    assert big.output.shape[-1] == 10
    # ResNet-20's published size: 0.27M parameters, ~41M multiply-adds
    r = model_summary_row(build_model("resnet20", 10))
    assert 0.26e6 < r["params"] < 0.28e6 and 38e6 < r["macs"] < 44e6
