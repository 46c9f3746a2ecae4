import pytest

from task.config import ConfigError, RunConfig, parse_run_config, to_flat
from task.methods import METHODS, get_method


def test_defaults_roundtrip_through_flat_keys():
    cfg = parse_run_config({})
    assert parse_run_config(to_flat(cfg)) == cfg
    assert isinstance(cfg, RunConfig)


def test_hyphenated_keys_and_int_to_float():
    cfg = parse_run_config({"train.batch-size": 8, "train.lr": 1, "prompt.fusion": "concat"})
    assert cfg.train.batch_size == 8 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.prompt.fusion == "concat"


@pytest.mark.parametrize(
    "flat, match",
    [
        ({"train.lrr": 0.1}, "did you mean 'train.lr'"),
        ({"nosuch.key": 1}, "unknown run-config section"),
        ({"train.epochs": "3"}, "must be of type int"),
        ({"train.epochs": 1.5}, "must be of type int"),
        ({"prompt.fusion": "sum"}, "prompt.fusion must be one of"),
        ({"loss.ot-reg": 0.0}, "ot-reg"),
        ({"method.name": "nope"}, "method.name 'nope' is unknown"),
        ({"train.optimizer": "lion"}, "train.optimizer"),
        ({"data.num-clients": 0}, "num-clients"),
        ({"model.dtype": "int8"}, "model.dtype"),
    ],
)
def test_bad_values_are_rejected_with_the_key_named(flat, match):
    with pytest.raises(ConfigError, match=match):
        parse_run_config(flat)


def test_methods_declare_disjoint_shared_and_private_keys():
    for method in METHODS.values():
        assert not set(method.shared_keys) & set(method.private_keys)
    assert get_method("fedrsclip").private_keys == ("private_ctx",)
    assert get_method("promptfl").private_keys == ()
    assert get_method("zeroshot").shared_keys == ()
    with pytest.raises(ValueError, match="unknown method"):
        get_method("fedsomething")
