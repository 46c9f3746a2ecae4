from __future__ import annotations

import dataclasses
import typing

import pytest

from task.config import DataConfig


def test_defaults_valid_and_scalar() -> None:
    cfg = DataConfig()
    hints = typing.get_type_hints(DataConfig)
    for f in dataclasses.fields(cfg):
        assert hints[f.name] in (str, int, float, bool), f.name


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"dataset": "mnist"}, "data.dataset"),
        ({"dataset": "imagefolder"}, "data.root"),
        ({"num_clients": 0}, "data.num-clients"),
        ({"partitioner": "iid"}, "data.partitioner"),
        ({"alpha": 0.0}, "data.alpha"),
        ({"classes_per_client": 0}, "data.classes-per-client"),
        ({"class_assignment": "x"}, "data.class-assignment"),
        ({"min_client_size": 1}, "data.min-client-size"),
        ({"test_fraction": 1.0}, "data.test-fraction"),
        ({"verify": "all"}, "data.verify"),
        ({"cross": "ucmerced:5,aid:4"}, "data.num-clients"),
        ({"cross": "ucmerced5"}, "data.cross"),
        ({"cross": "ucmerced:5,foo:5"}, "data.cross"),
        ({"cross": "ucmerced:5,ucmerced:5"}, "data.cross"),
        ({"cross": "ucmerced:5,aid:5", "cross_roots": "eurosat=/x"}, "data.cross-roots"),
        ({"cross": "ucmerced:5,aid:5", "cross_roots": "ucmerced"}, "data.cross-roots"),
        ({"cross": "ucmerced:5,aid:5", "cross_aliases": "port"}, "data.cross-aliases"),
    ],
)
def test_bad_values_name_key_and_fix(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key) as info:
        DataConfig(**kwargs)
    assert "Fix:" in str(info.value)


def test_unknown_dataset_lists_known() -> None:
    with pytest.raises(ValueError, match="nwpu-resisc45"):
        DataConfig(dataset="resisc")


def test_validate_after_setattr() -> None:
    cfg = DataConfig()
    cfg.num_clients = -1
    with pytest.raises(ValueError, match="num-clients"):
        cfg.validate()


def test_cross_parsing() -> None:
    cfg = DataConfig(
        cross="ucmerced:3, aid:7", cross_roots="ucmerced=/a,aid=/b", cross_aliases="Port=Harbor"
    )
    assert cfg.cross_groups() == [("ucmerced", 3), ("aid", 7)]
    assert cfg.cross_root_map() == {"ucmerced": "/a", "aid": "/b"}
    assert cfg.cross_alias_map() == {"port": "harbor"}
