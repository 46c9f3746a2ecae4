"""data.class-names folder=words entries: folders named like `01_Grassland` (common in public RS
datasets) map to prompt words, in shared and per-node (local) federations, with errors naming
the entry to fix."""

from __future__ import annotations

import pytest

from task.data import DataConfig, DataError, build_federation, build_local_federation
from task.data.classnames import match_folders

PREFIXED = {"01_Grassland": 5, "02_Farmland": 4, "03_Industrial": 4, "04_RiverLake": 3}
MAPPING = (
    "01_Grassland=grassland,02_Farmland=farmland,03_Industrial=industrial,"
    "04_RiverLake=river or lake"
)


def shared_cfg(root, class_names: str, **kw) -> DataConfig:
    return DataConfig(
        dataset="imagefolder", root=str(root), num_clients=2, class_names=class_names, **kw
    )


def test_entries_folder_map_and_prompt_words() -> None:
    cfg = DataConfig(class_names="01_Grassland=grassland, 04_RiverLake = river or lake ,beach")
    assert cfg.class_entries() == [
        ("01_Grassland", "grassland"),
        ("04_RiverLake", "river or lake"),
        ("", "beach"),
    ]
    assert cfg.class_name_list() == ["grassland", "river or lake", "beach"]
    assert cfg.class_folder_map() == {"01_Grassland": 0, "04_RiverLake": 1}


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("=grassland,beach", "'=grassland'"),
        ("01_Grassland=,beach", "'01_Grassland='"),
        ("a=b=c", "'a=b=c'"),
        ("01_G=grassland,01_G=meadow", "'01_G=meadow'"),  # one folder mapped twice
        ("01_G=grassland,05_M=grassland", "'05_M=grassland'"),  # two folders to one class
        ("01_G=grassland,grassland", "'01_G=grassland'"),
    ],
)
def test_malformed_entries_are_errors_naming_the_entry(value: str, named: str) -> None:
    with pytest.raises(ValueError, match="data.class-names") as info:
        DataConfig(class_names=value)
    assert named in str(info.value) and "Fix:" in str(info.value)


def test_prefixed_folders_map_to_classes_in_entry_order(make_tree) -> None:
    root = make_tree(PREFIXED, name="scenes")
    fed = build_federation(shared_cfg(root, MAPPING))
    assert fed.class_names == ["grassland", "farmland", "industrial", "river or lake"]
    assert fed.label_map == {
        "imagefolder": {
            "01_Grassland": "grassland",
            "02_Farmland": "farmland",
            "03_Industrial": "industrial",
            "04_RiverLake": "river or lake",
        }
    }
    labels = {r.image_id.split("/")[1]: r.label for c in fed.clients for r in c.train + c.test}
    assert labels == {"01_Grassland": 0, "02_Farmland": 1, "03_Industrial": 2, "04_RiverLake": 3}
    # mapped and plain entries mix: a plain entry still matches its folder by name
    root2 = make_tree({"01_Grassland": 4, "beach": 4}, name="mixed")
    fed2 = build_federation(shared_cfg(root2, "beach,01_Grassland=grassland"))
    assert fed2.label_map["imagefolder"] == {"01_Grassland": "grassland", "beach": "beach"}


def test_unmapped_prefixed_folders_suggest_the_fix(make_tree) -> None:
    root = make_tree(PREFIXED, name="scenes")
    with pytest.raises(DataError) as info:
        build_federation(shared_cfg(root, "grassland,farmland,industrial,river lake"))
    text = str(info.value)
    assert "['01_Grassland', '02_Farmland', '03_Industrial', '04_RiverLake']" in text
    assert (
        "data.class-names='01_Grassland=grassland,02_Farmland=farmland,"
        "03_Industrial=industrial,04_RiverLake=river lake'" in text
    )


def test_mapped_folder_that_does_not_exist_names_the_entry(make_tree) -> None:
    root = make_tree({"01_Grassland": 4, "02_Farmland": 4}, name="scenes")
    with pytest.raises(DataError, match=r"'01_grassland=grassland'.*did you mean '01_Grassland'"):
        build_federation(shared_cfg(root, "01_grassland=grassland,02_Farmland=farmland"))


def test_every_class_needs_a_folder_in_a_shared_federation(make_tree) -> None:
    root = make_tree({"01_Grassland": 4, "02_Farmland": 4}, name="scenes")
    with pytest.raises(DataError, match=r"data.class-names lists \['beach'\]"):
        build_federation(shared_cfg(root, "01_Grassland=grassland,02_Farmland=farmland,beach"))


def test_two_folders_to_one_class_by_name_and_mapping() -> None:
    with pytest.raises(DataError, match="same class"):
        match_folders(["01_Grass", "grassland"], ["grassland"], "imagefolder", {"01_Grass": 0})


def test_local_nodes_use_the_mapping_and_may_lack_classes(make_tree) -> None:
    node = make_tree({"04_RiverLake": 4, "01_Grassland": 3}, name="node0")
    cfg = DataConfig(dataset="imagefolder", partitioner="local", num_clients=2, class_names=MAPPING)
    fed = build_local_federation(cfg, str(node), 0)
    assert fed.class_names == ["grassland", "farmland", "industrial", "river or lake"]
    labels = {r.image_id.split("/")[1]: r.label for r in fed.clients[0].train + fed.clients[0].test}
    assert labels == {"01_Grassland": 0, "04_RiverLake": 3}
    stray = make_tree({"05_Beach": 3, "01_Grassland": 3}, name="node1")
    with pytest.raises(DataError, match=r"\['05_Beach'\].*every node"):
        build_local_federation(cfg, str(stray), 1)
