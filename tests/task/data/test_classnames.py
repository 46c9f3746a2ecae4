from __future__ import annotations

import pytest

from task.data.classnames import harmonize, humanize, humanize_generic
from tests.task.data.conftest import SHARED

UCM_EXPECTED = {
    "agricultural": "agricultural",
    "airplane": "airplane",
    "baseballdiamond": "baseball diamond",
    "beach": "beach",
    "buildings": "buildings",
    "chaparral": "chaparral",
    "denseresidential": "dense residential",
    "forest": "forest",
    "freeway": "freeway",
    "golfcourse": "golf course",
    "harbor": "harbor",
    "intersection": "intersection",
    "mediumresidential": "medium residential",
    "mobilehomepark": "mobile home park",
    "overpass": "overpass",
    "parkinglot": "parking lot",
    "river": "river",
    "runway": "runway",
    "sparseresidential": "sparse residential",
    "storagetanks": "storage tanks",
    "tenniscourt": "tennis court",
}
AID_EXPECTED = {
    "Airport": "airport",
    "BareLand": "bare land",
    "BaseballField": "baseball field",
    "Beach": "beach",
    "Bridge": "bridge",
    "Center": "center",
    "Church": "church",
    "Commercial": "commercial",
    "DenseResidential": "dense residential",
    "Desert": "desert",
    "Farmland": "farmland",
    "Forest": "forest",
    "Industrial": "industrial",
    "Meadow": "meadow",
    "MediumResidential": "medium residential",
    "Mountain": "mountain",
    "Park": "park",
    "Parking": "parking lot",
    "Playground": "playground",
    "Pond": "pond",
    "Port": "port",
    "RailwayStation": "railway station",
    "Resort": "resort",
    "River": "river",
    "School": "school",
    "SparseResidential": "sparse residential",
    "Square": "square",
    "Stadium": "stadium",
    "StorageTanks": "storage tanks",
    "Viaduct": "viaduct",
}


@pytest.mark.parametrize("folder,words", sorted(UCM_EXPECTED.items()))
def test_ucmerced_every_class(folder: str, words: str) -> None:
    assert humanize(folder, "ucmerced") == words


@pytest.mark.parametrize("folder,words", sorted(AID_EXPECTED.items()))
def test_aid_every_class(folder: str, words: str) -> None:
    assert humanize(folder, "aid") == words


def test_the_module_tables_are_the_published_class_lists() -> None:
    """The module's own tables (not this file's) hold exactly the published class folders and
    the names each maps to (UC Merced: 21 classes, AID: 30)."""
    from task.data.classnames import AID, UCMERCED

    assert UCMERCED == UCM_EXPECTED and AID == AID_EXPECTED
    assert len(UCMERCED) == 21 and len(AID) == 30


def test_generic_rule_reproduces_tables_except_parking() -> None:
    for table in (UCM_EXPECTED, AID_EXPECTED):
        for folder, words in table.items():
            if folder != "Parking":
                assert humanize_generic(folder) == words, folder


@pytest.mark.parametrize(
    "folder,words",
    [
        ("thermal_power_station", "thermal power station"),
        ("HerbaceousVegetation", "herbaceous vegetation"),
        ("baseball diamond", "baseball diamond"),
        ("ground-track-field", "ground track field"),
        ("XYZUnknownThing", "xyz unknown thing"),
        ("qqqq", "qqqq"),
    ],
)
def test_generic_rule(folder: str, words: str) -> None:
    assert humanize_generic(folder) == words


def test_eurosat_table() -> None:
    assert humanize("SeaLake", "eurosat") == "sea or lake"
    assert humanize("AnnualCrop", "eurosat") == "annual crop"


def test_harmonize() -> None:
    assert harmonize(humanize("parkinglot", "ucmerced")) == "parking lot"
    assert harmonize(humanize("Parking", "aid")) == "parking lot"
    assert harmonize("parking") == "parking lot"
    assert harmonize("baseball field") == "baseball diamond"
    assert harmonize("beach") == "beach"
    assert harmonize("port", {"port": "harbor"}) == "harbor"
    assert harmonize("a", {"a": "b", "b": "a"}) in {"a", "b"}  # cycles terminate


@pytest.mark.integration
@pytest.mark.parametrize("dataset,table", [("ucmerced", UCM_EXPECTED), ("aid", AID_EXPECTED)])
def test_real_folders_have_table_entries(dataset: str, table: dict[str, str]) -> None:
    root = SHARED / "data" / dataset
    if not root.is_dir():
        pytest.skip(f"{root} not present (../shared data is only on the project machines)")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == sorted(table)
    for f in folders:
        assert humanize(f, dataset) == table[f]
