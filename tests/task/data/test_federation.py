from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from task.data import (
    CorruptImageError,
    DataConfig,
    DataError,
    Federation,
    build_federation,
    write_manifest,
)

CLASSES = {"agricultural": 12, "beach": 10, "forest": 9, "parkinglot": 11, "river": 8}


@pytest.fixture
def tree(make_tree) -> Path:
    return make_tree(CLASSES, name="ucm")


def cfg_for(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset="imagefolder", root=str(root), **kw)


def all_ids(fed: Federation) -> list[str]:
    return [r.image_id for c in fed.clients for r in c.train + c.test]


def check_basic(fed: Federation, n_images: int) -> None:
    ids = all_ids(fed)
    assert len(ids) == len(set(ids)) == n_images  # disjoint and complete
    for c in fed.clients:
        assert c.train and c.test
        assert not {r.image_id for r in c.train} & {r.image_id for r in c.test}
    assert [c.client_id for c in fed.clients] == list(range(len(fed.clients)))
    assert len(fed.global_test()) == sum(len(c.test) for c in fed.clients)


@pytest.mark.parametrize("partitioner", ["even", "quantity-skew", "dirichlet", "pathological"])
def test_every_partitioner(tree: Path, partitioner: str) -> None:
    fed = build_federation(cfg_for(tree, num_clients=4, partitioner=partitioner, alpha=1.0))
    check_basic(fed, sum(CLASSES.values()))
    assert fed.class_names == ["agricultural", "beach", "forest", "parking lot", "river"]


def test_even_sizes_and_shuffle(tree: Path) -> None:
    fed = build_federation(cfg_for(tree, num_clients=5))
    sizes = [len(c.train) + len(c.test) for c in fed.clients]
    assert max(sizes) - min(sizes) <= 1
    for c in fed.clients:  # shuffled before the IID split: not one class per client
        assert len({r.label for r in c.train + c.test}) > 1


def test_stratified_split(tree: Path) -> None:
    fed = build_federation(cfg_for(tree, num_clients=2, test_fraction=0.25))
    for c in fed.clients:
        n = len(c.train) + len(c.test)
        assert len(c.test) == round(n * 0.25)
        for label in range(len(fed.class_names)):
            n_c = sum(r.label == label for r in c.train + c.test)
            t_c = sum(r.label == label for r in c.test)
            assert abs(t_c - n_c * len(c.test) / n) < 1


def test_pathological_classes_per_client(tree: Path) -> None:
    fed = build_federation(
        cfg_for(tree, num_clients=5, partitioner="pathological", classes_per_client=2)
    )
    for c in fed.clients:
        assert len({r.label for r in c.train + c.test}) <= 2


def test_quantity_skew_sizes_vary(make_tree) -> None:
    root = make_tree({"a": 30, "b": 30}, name="qs")
    fed = build_federation(
        cfg_for(root, num_clients=4, partitioner="quantity-skew", alpha=0.3, verify="none")
    )
    sizes = [len(c.train) + len(c.test) for c in fed.clients]
    assert sum(sizes) == 60 and min(sizes) >= 2 and max(sizes) - min(sizes) > 5


def test_deterministic_and_seeded(tree: Path) -> None:
    a = build_federation(cfg_for(tree, num_clients=3, partitioner="dirichlet", seed=1))
    b = build_federation(cfg_for(tree, num_clients=3, partitioner="dirichlet", seed=1))
    c = build_federation(cfg_for(tree, num_clients=3, partitioner="dirichlet", seed=2))
    assert a.fingerprint() == b.fingerprint()
    assert [x.train for x in a.clients] == [x.train for x in b.clients]
    assert a.fingerprint() != c.fingerprint()


def test_same_partition_across_processes_and_hash_seeds(tree: Path) -> None:
    code = (
        "import sys; from task.data import DataConfig, build_federation;"
        f"print(build_federation(DataConfig(dataset='imagefolder', root={str(tree)!r},"
        "num_clients=3, partitioner='pathological')).fingerprint())"
    )
    repo = Path(__file__).resolve().parents[3]
    prints = set()
    for hash_seed in ("1", "987"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        prints.add(out.stdout.strip())
    local = build_federation(cfg_for(tree, num_clients=3, partitioner="pathological"))
    assert prints == {local.fingerprint()}


def test_image_ids_do_not_depend_on_location(make_tree, tmp_path: Path) -> None:
    a = build_federation(cfg_for(make_tree({"a": 4, "b": 4}, name="one"), num_clients=2))
    b = build_federation(cfg_for(make_tree({"a": 4, "b": 4}, name="two"), num_clients=2))
    assert a.fingerprint() == b.fingerprint()


def test_fewer_images_than_clients_need(make_tree) -> None:
    root = make_tree({"a": 3, "b": 2}, name="small")
    with pytest.raises(DataError, match="5 images for 3 clients.*Fix"):
        build_federation(cfg_for(root, num_clients=3))


def test_client_would_get_no_test(make_tree) -> None:
    root = make_tree({"a": 10, "b": 1}, name="skewed")
    with pytest.raises(DataError, match="Fix"):
        build_federation(
            cfg_for(
                root,
                num_clients=5,
                partitioner="pathological",
                classes_per_client=1,
                class_assignment="deterministic",
            )
        )


def test_dirichlet_impossible_min_size(make_tree) -> None:
    root = make_tree({"a": 6, "b": 6}, name="dir")
    with pytest.raises(DataError, match="data.alpha"):
        build_federation(
            cfg_for(root, num_clients=4, partitioner="dirichlet", alpha=0.01, min_client_size=3)
        )


def test_corrupt_image_before_training(tree: Path) -> None:
    bad = tree / "beach" / "zz_bad.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    with pytest.raises(CorruptImageError, match="zz_bad.jpg"):
        build_federation(cfg_for(tree, num_clients=2))
    fed = build_federation(cfg_for(tree, num_clients=2, skip_corrupt=True))
    assert fed.skipped_corrupt == 1
    assert "imagefolder/beach/zz_bad.jpg" not in all_ids(fed)
    check_basic(fed, sum(CLASSES.values()))


def test_unknown_dataset_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'ucm'.*aid"):
        build_federation(DataConfig(dataset="ucm"))
    with pytest.raises(DataError, match="does not exist"):
        build_federation(DataConfig(dataset="ucmerced", root=str(tmp_path / "missing")))


@pytest.fixture
def cross_cfg(make_tree) -> DataConfig:
    ucm = make_tree({"beach": 8, "parkinglot": 8, "harbor": 8}, name="ucm")
    aid = make_tree({"Beach": 8, "Parking": 8, "Port": 8, "BaseballField": 8}, name="aid")
    return DataConfig(
        dataset="ucmerced",
        num_clients=5,
        cross="ucmerced:2,aid:3",
        cross_roots=f"ucmerced={ucm},aid={aid}",
    )


def test_cross_dataset_federation(cross_cfg: DataConfig) -> None:
    fed = build_federation(cross_cfg)
    assert fed.name == "ucmerced+aid"
    assert fed.class_names == ["baseball diamond", "beach", "harbor", "parking lot", "port"]
    assert fed.label_map["ucmerced"]["parkinglot"] == "parking lot"
    assert fed.label_map["aid"]["Parking"] == "parking lot"
    assert fed.label_map["aid"]["Beach"] == fed.label_map["ucmerced"]["beach"] == "beach"
    assert [c.source for c in fed.clients] == ["ucmerced"] * 2 + ["aid"] * 3
    check_basic(fed, 56)
    pl = fed.class_names.index("parking lot")
    for c in fed.clients:
        for r in c.train + c.test:
            assert r.image_id.startswith(c.source + "/")
            if "parkinglot" in r.image_id or "/Parking/" in r.image_id:
                assert r.label == pl


def test_cross_aliases(cross_cfg: DataConfig) -> None:
    cross_cfg.cross_aliases = "port=harbor"
    fed = build_federation(cross_cfg)
    assert "port" not in fed.class_names and fed.label_map["aid"]["Port"] == "harbor"


def test_manifest_and_heatmap(cross_cfg: DataConfig, tmp_path: Path) -> None:
    fed = build_federation(cross_cfg)
    out = tmp_path / "run"
    write_manifest(fed, out)
    man = json.loads((out / "partition.json").read_text())
    assert man["fingerprint"] == fed.fingerprint()
    assert man["label_map"]["aid"]["Parking"] == "parking lot"
    assert man["class_names"] == fed.class_names
    c0 = man["clients"][0]
    assert c0["train_ids"] == [r.image_id for r in fed.clients[0].train]
    assert sum(c0["train_histogram"]) == c0["num_train"]
    assert man["config"]["cross"] == "ucmerced:2,aid:3"
    with Image.open(out / "partition_heatmap.png") as im:
        assert im.format == "PNG" and im.width > 100
    assert not any(os.path.isabs(i) for c in man["clients"] for i in c["test_ids"])
