"""data.partitioner=local (a node's own folder is its partition), data.class-names, the per-client
validation split (data.val-fraction / data.holdout) and clear errors from every partitioner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from task.data import (
    DataConfig,
    DataError,
    build_federation,
    build_local_federation,
    local_manifest_dict,
    write_run_manifest,
)
from task.data.classnames import match_folders
from task.data.partition import partition_indices

NAMES = "agricultural,beach,dense residential,forest,golf course"


def local_cfg(**kw) -> DataConfig:
    base = {"dataset": "imagefolder", "partitioner": "local", "class_names": NAMES}
    return DataConfig(**{**base, **kw})


# -- class names ------------------------------------------------------------------------------
def test_folder_spellings_map_to_class_names_by_name() -> None:
    names = DataConfig(class_names="Dense Residential, golf_course ,beach").class_name_list()
    assert names == ["dense residential", "golf course", "beach"]
    folders = ["denseresidential", "Dense Residential", "GolfCourse", "beach"]
    got = {f: match_folders([f], names, "imagefolder")[f] for f in folders}
    assert got == {"denseresidential": 0, "Dense Residential": 0, "GolfCourse": 1, "beach": 2}
    # the dataset's own table applies too (AID "Parking" is "parking lot")
    assert match_folders(["Parking"], ["parking lot"], "aid") == {"Parking": 0}


def test_unknown_folder_names_folder_and_list() -> None:
    with pytest.raises(DataError, match=r"\['harbour'\].*data.class-names.*beach") as info:
        match_folders(["beach", "harbour"], ["beach", "forest"], "imagefolder")
    assert "Fix:" in str(info.value)


def test_two_folders_one_class_is_an_error() -> None:
    with pytest.raises(DataError, match="same class"):
        match_folders(["golfcourse", "golf_course"], ["golf course"], "imagefolder")


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"class_names": ""}, "data.class-names"),
        ({"class_names": "beach,,forest"}, "data.class-names"),
        ({"class_names": "golf course,golfcourse"}, "data.class-names"),
        ({"root": "/some/where"}, "data.root"),
        ({"val_fraction": 1.0}, "data.val-fraction"),
        ({"val_fraction": -0.1}, "data.val-fraction"),
        ({"holdout": "train"}, "data.holdout"),
        ({"holdout": "val"}, "data.holdout"),  # val-fraction 0: no val split to evaluate on
    ],
)
def test_local_config_errors_name_key_and_fix(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key) as info:
        local_cfg(**kwargs)
    assert "Fix:" in str(info.value)


def test_class_names_with_cross_is_refused() -> None:
    with pytest.raises(ValueError, match="data.class-names"):
        DataConfig(cross="ucmerced:1,aid:1", num_clients=2, class_names="beach")


# -- local partitioner ------------------------------------------------------------------------
def test_local_node_reads_only_its_folder(make_tree) -> None:
    # This node lacks 'forest' and 'golf course' (label skew) and spells folders its own way.
    node = make_tree({"Dense Residential": 6, "agricultural": 5, "beach": 4}, name="node1")
    make_tree({"forest": 9, "golfcourse": 9}, name="node0")  # another institution: not read
    fed = build_local_federation(local_cfg(num_clients=3), str(node), 1)
    assert fed.class_names == [
        "agricultural",
        "beach",
        "dense residential",
        "forest",
        "golf course",
    ]
    (client,) = fed.clients
    assert client.client_id == 1 and fed.client(1) is client
    recs = client.train + client.test
    assert len(recs) == 15 and all(Path(r.path).is_relative_to(node) for r in recs)
    by_folder = {r.image_id.split("/")[1]: r.label for r in recs}
    assert by_folder == {"Dense Residential": 2, "agricultural": 0, "beach": 1}
    assert fed.label_map == {"imagefolder": {k: fed.class_names[v] for k, v in by_folder.items()}}
    assert {r.label for r in client.test} == {0, 1, 2}  # stratified over the node's classes
    again = build_local_federation(local_cfg(num_clients=3), str(node), 1)
    assert again.fingerprint() == fed.fingerprint()


def test_local_node_errors(make_tree, tmp_path: Path) -> None:
    node = make_tree({"beach": 3, "harbour": 3}, name="node")
    with pytest.raises(DataError, match="harbour"):
        build_local_federation(local_cfg(num_clients=2), str(node), 0)
    with pytest.raises(DataError, match="partition-id 2"):
        build_local_federation(local_cfg(num_clients=2), str(node), 2)
    with pytest.raises(DataError, match="data-root"):
        build_local_federation(local_cfg(num_clients=2), str(tmp_path / "missing"), 0)
    tiny = make_tree({"beach": 2}, name="tiny")
    with pytest.raises(DataError, match="data.val-fraction"):
        build_local_federation(local_cfg(val_fraction=0.3, holdout="val"), str(tiny), 0)


def test_local_node_ignores_empty_class_folders(make_tree) -> None:
    node = make_tree({"beach": 4, "forest": 4}, name="node")
    (node / "golfcourse").mkdir()
    fed = build_local_federation(local_cfg(num_clients=1), str(node), 0)
    assert {r.label for r in fed.clients[0].train + fed.clients[0].test} == {1, 3}


def test_local_manifest_has_config_only(tmp_path: Path) -> None:
    cfg = local_cfg(num_clients=4, val_fraction=0.2, holdout="val")
    write_run_manifest(cfg, None, tmp_path)
    m = json.loads((tmp_path / "partition.json").read_text())
    assert m == local_manifest_dict(cfg)
    assert m["partitioner"] == "local" and m["num_clients"] == 4
    assert m["data_visible_to_server"] is False and m["clients"] == []
    assert m["class_names"] == cfg.class_name_list()
    assert m["split"] == {"test_fraction": 0.2, "val_fraction": 0.2, "holdout": "val", "seed": 0}
    assert not (tmp_path / "partition_heatmap.png").exists()


def test_class_names_fix_the_label_space_of_a_shared_federation(make_tree) -> None:
    root = make_tree({"beach": 6, "agricultural": 6}, name="ds")
    cfg = DataConfig(
        dataset="imagefolder", root=str(root), num_clients=2, class_names="beach,agricultural"
    )
    fed = build_federation(cfg)
    assert fed.class_names == ["beach", "agricultural"]
    assert {r.image_id.split("/")[1]: r.label for c in fed.clients for r in c.train} == {
        "beach": 0,
        "agricultural": 1,
    }


# -- validation split -------------------------------------------------------------------------
def test_val_split_trains_on_the_same_images_for_tuning_and_final_runs(make_tree) -> None:
    root = make_tree({"beach": 12, "forest": 10, "river": 9}, name="ds")
    base = {"dataset": "imagefolder", "root": str(root), "num_clients": 3, "alpha": 1.0}
    plain = build_federation(DataConfig(**base))
    final = build_federation(DataConfig(**base, val_fraction=0.25))
    tune = build_federation(DataConfig(**base, val_fraction=0.25, holdout="val"))
    assert plain.fingerprint() != final.fingerprint() != tune.fingerprint()
    for p, f, t in zip(plain.clients, final.clients, tune.clients, strict=True):
        assert ids(f.test) == ids(p.test)  # the test split does not move
        assert ids(f.train) | ids(f.val) == ids(p.train) and not ids(f.train) & ids(f.val)
        assert f.val and f.withheld == 0
        assert ids(t.train) == ids(f.train)  # tuned and final runs train on the same images
        assert ids(t.test) == ids(f.val) and not t.val and t.withheld == len(p.test)
    assert ids(tune.global_test()) == ids([r for c in final.clients for r in c.val])


def ids(records) -> set[str]:
    return {r.image_id for r in records}


def test_val_split_in_manifest_and_local_mode(make_tree, tmp_path: Path) -> None:
    root = make_tree({"beach": 10, "forest": 10}, name="ds")
    cfg = DataConfig(dataset="imagefolder", root=str(root), num_clients=2, val_fraction=0.3)
    fed = build_federation(cfg)
    write_run_manifest(cfg, fed, tmp_path)
    m = json.loads((tmp_path / "partition.json").read_text())
    assert m["evaluated_split"] == "test"
    c0 = m["clients"][0]
    assert c0["num_val"] == len(c0["val_ids"]) > 0
    node = build_local_federation(
        local_cfg(class_names="beach,forest", val_fraction=0.3, holdout="val"), str(root), 0
    )
    (client,) = node.clients
    assert client.withheld > 0 and len(client.train) + len(client.test) + client.withheld == 20


# -- partitioner failures ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("partitioner", "num_clients", "kwargs"),
    [
        ("even", 8, {}),  # 15 images cannot give 8 clients 2 each
        ("even", 40, {}),
        ("quantity-skew", 6, {"min_client_size": 3}),
        ("dirichlet", 6, {}),  # flwr-datasets gives up after 10 draws
        ("pathological", 6, {}),  # a label is needed on more clients than it has images
        ("pathological", 3, {"classes_per_client": 4}),  # only 3 classes
    ],
)
def test_impossible_partitions_are_data_errors_naming_a_key(
    make_tree, partitioner: str, num_clients: int, kwargs: dict
) -> None:
    root = make_tree({"beach": 6, "forest": 5, "river": 4}, name="small")
    cfg = DataConfig(
        dataset="imagefolder",
        root=str(root),
        num_clients=num_clients,
        partitioner=partitioner,
        **kwargs,
    )
    with pytest.raises(DataError, match=r"Fix: .*data\.(num-clients|min-client-size)"):
        build_federation(cfg)


@pytest.mark.parametrize(
    ("partitioner", "kwargs"),
    [
        ("quantity-skew", {"min_client_size": 0}),
        ("dirichlet", {"alpha": 0.0}),
        ("pathological", {"classes_per_client": 5}),
        ("even", {}),
    ],
)
def test_partition_indices_never_raises_bare_value_errors(partitioner: str, kwargs: dict) -> None:
    labels = [i % 3 for i in range(12)]
    k = 0 if partitioner == "even" else 4
    with pytest.raises(DataError, match=r"Fix: .*data\."):
        partition_indices(labels, k, partitioner, seed=0, **kwargs)


def test_val_split_needs_three_images_per_client(make_tree) -> None:
    root = make_tree({"beach": 5, "forest": 5}, name="ds")
    cfg = DataConfig(dataset="imagefolder", root=str(root), num_clients=4, val_fraction=0.2)
    with pytest.raises(DataError, match="data.val-fraction"):
        build_federation(cfg)
