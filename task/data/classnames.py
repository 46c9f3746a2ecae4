"""Folder names -> prompt words ("baseballdiamond" -> "baseball diamond").

CLIP prompts read "a photo of a {class}", so class names must be plain lower-case words.
Each dataset has an explicit table; anything else goes through a generic rule (split
separators and camel case, then split glued compounds with a small vocabulary).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from functools import lru_cache

UCMERCED: dict[str, str] = {
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

AID: dict[str, str] = {
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
    "Parking": "parking lot",  # "a photo of a parking" reads badly; same scene as UCM's
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


def _split_words(text: str) -> list[str]:
    return text.split()


NWPU_RESISC45: dict[str, str] = {
    n: n.replace("_", " ")
    for n in _split_words(
        "airplane airport baseball_diamond basketball_court beach bridge chaparral church "
        "circular_farmland cloud commercial_area dense_residential desert forest freeway "
        "golf_course ground_track_field harbor industrial_area intersection island lake meadow "
        "medium_residential mobile_home_park mountain overpass palace parking_lot railway "
        "railway_station rectangular_farmland river roundabout runway sea_ice ship snowberg "
        "sparse_residential stadium storage_tank tennis_court terrace thermal_power_station "
        "wetland"
    )
}

OPTIMAL_31: dict[str, str] = {
    n: n.replace("_", " ")
    for n in _split_words(
        "airplane airport baseball_diamond basketball_court beach bridge chaparral church "
        "circular_farmland commercial_area dense_residential desert forest freeway golf_course "
        "ground_track_field harbor industrial_area intersection island lake meadow "
        "medium_residential mobile_home_park mountain overpass parking_lot railway "
        "rectangular_farmland roundabout runway"
    )
}

EUROSAT: dict[str, str] = {
    "AnnualCrop": "annual crop",
    "Forest": "forest",
    "HerbaceousVegetation": "herbaceous vegetation",
    "Highway": "highway",
    "Industrial": "industrial buildings",
    "Pasture": "pasture",
    "PermanentCrop": "permanent crop",
    "Residential": "residential buildings",
    "River": "river",
    "SeaLake": "sea or lake",
    # spellings used by hub copies (blanchon/EuroSAT_RGB)
    "Industrial Buildings": "industrial buildings",
    "Residential Buildings": "residential buildings",
}

TABLES: dict[str, dict[str, str]] = {
    "ucmerced": UCMERCED,
    "aid": AID,
    "nwpu-resisc45": NWPU_RESISC45,
    "optimal-31": OPTIMAL_31,
    "eurosat": EUROSAT,
}

# Merges applied when datasets are federated together (after humanising): two datasets'
# names for the same scene type map to one unified class. Extend with data.cross-aliases.
CROSS_ALIASES: dict[str, str] = {
    "parking": "parking lot",
    "baseball field": "baseball diamond",
    "storage tank": "storage tanks",
    "industrial area": "industrial",
    "commercial area": "commercial",
    "sea or lake": "lake",
}

_EXTRA_WORDS = (
    "land field court building area station power track ice tank lot home park crop "
    "swimming pool sea lake road ground parking residential vegetation"
)


@lru_cache(maxsize=1)
def _vocabulary() -> frozenset[str]:
    words = set(_EXTRA_WORDS.split())
    for table in TABLES.values():
        for value in table.values():
            words.update(w for w in value.split() if len(w) > 1 and w != "or")
    return frozenset(words)


def _segment(token: str) -> list[str] | None:
    """Split a glued lower-case token into the fewest vocabulary words, or None."""
    vocab = _vocabulary()
    n = len(token)
    best: list[list[str] | None] = [None] * (n + 1)
    best[0] = []
    for end in range(1, n + 1):
        for start in range(end):
            head = best[start]
            word = token[start:end]
            if head is not None and word in vocab:
                cand = [*head, word]
                if best[end] is None or len(cand) < len(best[end]):  # type: ignore[arg-type]
                    best[end] = cand
    return best[n]


def humanize_generic(folder: str) -> str:
    """Generic rule: separators and camel case to spaces, glued compounds split, lower case."""
    text = re.sub(r"[_\-.]+", " ", folder.strip())
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", text)
    text = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", " ", text)
    out: list[str] = []
    for token in text.lower().split():
        seg = None if token in _vocabulary() else _segment(token)
        out.extend(seg if seg else [token])
    return " ".join(out)


def humanize(folder: str, dataset: str | None = None) -> str:
    """Prompt words for a class folder: the dataset's table first, then the generic rule."""
    table = TABLES.get(dataset or "", {})
    if folder in table:
        return table[folder]
    return humanize_generic(folder)


def harmonize(name: str, extra_aliases: dict[str, str] | None = None) -> str:
    """Unified cross-dataset class name for a humanised name (aliases applied transitively)."""
    aliases = {**CROSS_ALIASES, **(extra_aliases or {})}
    seen = {name}
    while name in aliases:
        name = aliases[name]
        if name in seen:
            break
        seen.add(name)
    return name


def class_key(name: str) -> str:
    """Spelling-free identity of a humanised class name: "golf course" == "golfcourse".

    Folder names and `data.class-names` entries are both humanised and then compared on this
    key, so a glued compound the vocabulary cannot split still matches its spaced form.
    """
    return name.replace(" ", "").lower()


def match_folders(
    folders: list[str],
    class_names: list[str],
    dataset: str,
    folder_map: Mapping[str, int] | None = None,
    *,
    local: bool = False,
) -> dict[str, int]:
    """Map each class folder to its index in `class_names` (humanised names, e.g. from
    DataConfig.class_name_list).

    A folder named in `folder_map` (the ``folder=words`` entries, DataConfig.class_folder_map)
    gets that class; any other folder matches when its humanised name (dataset table first, then
    the generic rule) has the same class_key as an entry. Unknown folders are a DataError naming
    them and suggesting the ``folder=words`` entries that would fix it, so a node can never invent
    a label the others lack. A mapped folder that is absent is an error unless ``local`` (a node
    may lack classes).
    """
    from task.data.errors import DataError

    mapped = dict(folder_map or {})
    index = {class_key(n): i for i, n in enumerate(class_names)}
    out: dict[str, int] = {}
    unknown: list[str] = []
    for folder in folders:
        if folder in mapped:
            out[folder] = mapped[folder]
            continue
        keys = (class_key(humanize(folder, dataset)), class_key(humanize_generic(folder)))
        hit = next((index[k] for k in keys if k in index), None)
        if hit is None:
            unknown.append(folder)
        else:
            out[folder] = hit
    absent = [f for f in mapped if f not in folders]
    if absent and not local:
        entries = [f"{f}={class_names[mapped[f]]}" for f in absent]
        near = {f: difflib.get_close_matches(f, folders, n=1) for f in absent}
        hints = [f"{f!r} -> did you mean {m[0]!r}?" for f, m in near.items() if m]
        raise DataError(
            f"data.class-names entr{'y' if len(entries) == 1 else 'ies'} {entries} name(s) "
            f"folder(s) {absent} that do not exist; the class folders are {folders}"
            f"{' (' + '; '.join(hints) + ')' if hints else ''}. Fix: write the folder name "
            "exactly as on disk (case matters) on the left of '=' in data.class-names"
        )
    if unknown:
        raise DataError(_unknown_folders_message(unknown, class_names, mapped, dataset, local))
    clash = sorted({i for i in out.values() if list(out.values()).count(i) > 1})
    if clash:
        dup = [[f for f, i in out.items() if i == c] for c in clash]
        raise DataError(
            f"class folders {dup} all map to the same class "
            f"{[class_names[c] for c in clash]}; merge or rename them, or map each to its own "
            "class with folder=words entries in data.class-names (Fix: one folder per class)"
        )
    return out


_INDEX_PREFIX = re.compile(r"^\d+[\s_\-.]*")


def _unknown_folders_message(
    unknown: list[str],
    class_names: list[str],
    mapped: Mapping[str, int],
    dataset: str,
    local: bool,
) -> str:
    """The error for folders that match no class, with a data.class-names value that fixes it
    when every such folder is a class name behind an index prefix ("01_Grassland")."""
    index = {class_key(n): i for i, n in enumerate(class_names)}
    taken = set(mapped.values())
    guess: dict[int, str] = {}
    for folder in unknown:
        rest = _INDEX_PREFIX.sub("", folder)
        keys = (class_key(humanize(rest, dataset)), class_key(humanize_generic(rest)))
        hit = next((index[k] for k in keys if k in index), None)
        if rest and hit is not None and hit not in taken and hit not in guess:
            guess[hit] = folder
    by_label = {i: f for f, i in mapped.items()}
    if len(guess) == len(unknown):
        value = ",".join(
            f"{guess.get(i, by_label.get(i))}={n}" if i in guess or i in by_label else n
            for i, n in enumerate(class_names)
        )
        example = f"data.class-names='{value}'"
    else:  # some folders have no recognisable name: entries for them, guessed where possible
        named = {f: class_names[i] for i, f in guess.items()}
        pairs = ",".join(f"{f}={named.get(f, '<prompt words>')}" for f in unknown)
        example = f"entries '{pairs}' in place of the plain entries they stand for"
    node = ", or (coordinator) add the class to data.class-names for every node" if local else ""
    return (
        f"class folder(s) {unknown} match no entry of data.class-names {class_names}. Fix: map "
        f"each folder to its class with a folder=words entry, e.g. {example}; or rename the "
        f"folder(s) to one of those classes, or remove them{node}"
    )
