"""The one registry type: registration, patterns, duplicates, aliases, the unknown-name error."""

import pytest

import stablenas as sn
from stablenas.errors import ConfigError
from stablenas.registry import (
    ACTIVATIONS,
    DATASETS,
    DISCRETIZERS,
    METHODS,
    OPS,
    SPACES,
    DuplicateNameError,
    Registry,
    UnknownNameError,
)


def test_decorator_call_and_pattern():
    r: Registry = Registry("widget")

    @r.register("b-two")
    def two():
        return 2

    r.register("a-one", 1)
    r.register("b-three", 3, aliases=("three",))
    assert r.list() == ["a-one", "b-three", "b-two"]
    assert r.list("b-*") == ["b-three", "b-two"]
    assert r["b-two"] is two and r["three"] == 3 and "three" in r and "four" not in r
    assert r.canonical("three") == "b-three"
    assert dict(r.items()) == {"b-two": two, "a-one": 1, "b-three": 3}


def test_one_duplicate_policy_and_one_miss_error():
    r: Registry = Registry("widget")
    obj = object()
    r.register("x", obj)
    r.register("x", obj)  # the same object again (a module imported twice) is a no-op
    with pytest.raises(DuplicateNameError, match="widget 'x' is already registered"):
        r.register("x", object())
    with pytest.raises(DuplicateNameError, match="alias 'x'"):
        r.register("y", 1, aliases=("x",))
    r.register("x", 5, replace=True)
    assert r["x"] == 5
    with pytest.raises(UnknownNameError) as e:
        r["nope"]
    assert str(e.value) == "unknown widget 'nope'; available: x"
    assert isinstance(e.value, KeyError) and isinstance(e.value, ConfigError)
    r.unregister("x")
    assert "x" not in r


@pytest.mark.parametrize("reg, builtin", [
    (SPACES, "s5"), (OPS, "sep_conv_3x3"), (ACTIVATIONS, "sigmoid"),
    (DISCRETIZERS, "decorrelation"), (METHODS, "sdarts-adv"), (DATASETS, "fashion-mnist"),
])
def test_every_registry_is_the_one_type_and_knows_its_builtins(reg, builtin):
    assert isinstance(reg, Registry) and builtin in reg.list()
    with pytest.raises(UnknownNameError, match=f"unknown {reg.kind} 'zz-nope'; available: "):
        reg["zz-nope"]


def test_public_aliases_are_the_registries():
    assert sn.METHODS is METHODS and sn.OPS is OPS and sn.SPACES is SPACES


def test_dataset_aliases_are_accepted_by_search_and_train_configs():
    from stablenas.evaluate.train import TrainConfig

    for alias in ("cifar-10", "CIFAR_100", "fashionmnist"):
        assert sn.config_from_dict({"data": {"dataset": alias}}).data.dataset == alias
        assert TrainConfig(dataset=alias).dataset == alias
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'; available: .*cifar10"):
        sn.config_from_dict({"data": {"dataset": "imagenet"}})
