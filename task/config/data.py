"""Data section of the run config (`data.*` keys), validated before any work starts.

Flower's run config allows scalars only, so every field is a str/int/float/bool; list-like
settings (cross-dataset federations) are small comma-separated strings. docs/data.md explains
every key.
"""

from __future__ import annotations

from dataclasses import dataclass

from task.config.fields import key

PARTITIONERS = ("even", "quantity-skew", "dirichlet", "pathological", "local")
HOLDOUTS = ("test", "val")
CLASS_ASSIGNMENTS = ("first-deterministic", "deterministic", "random")
VERIFY_MODES = ("none", "open", "decode")


def _err(key_name: str, problem: str, fix: str) -> ValueError:
    return ValueError(f"data.{key_name}: {problem}. Fix: {fix}")


# Keys that name the federation (dataset, clients, split) rather than a setup: the report puts
# them in a table's columns, not in its setup line.
_FED = {"setup": False}


@dataclass
class DataConfig:
    """Which images, how they are split over clients, and how bad input is treated."""

    dataset: str = key("ucmerced", "registry name (`ucmerced`, `aid`, ..., `imagefolder`)", **_FED)
    root: str = key(
        "",
        "local `<root>/<class>/<image>` folder; empty: the registry's hub dataset "
        "(node config `data-root` overrides)",
        path=True,
        node="data-root",
        **_FED,
    )
    hub_id: str = key("", "override the registry's hub dataset id", **_FED)
    cache_dir: str = key(
        ".cache/datasets",
        "where hub datasets are written out as image files",
        resumable=True,
        in_name=False,
        path=True,
        **_FED,
    )
    num_clients: int = key(10, "clients (keep equal to `num-supernodes`)", **_FED)
    partitioner: str = key(
        "even", "`even`, `quantity-skew`, `dirichlet`, `pathological` or `local`", **_FED
    )
    alpha: float = key(
        0.5, "Dirichlet concentration (dirichlet: labels, quantity-skew: sizes)", **_FED
    )
    classes_per_client: int = key(2, "pathological: classes per client", **_FED)
    class_assignment: str = key(
        "first-deterministic", "pathological: flwr-datasets class assignment mode"
    )
    min_client_size: int = key(
        2, "dirichlet / quantity-skew: fewest images a client may get", **_FED
    )
    test_fraction: float = key(0.2, "per-client stratified held-out test share")
    val_fraction: float = key(
        0.0,
        "share of each client's train split held out as validation (0 = none); for tuning",
    )
    holdout: str = key(
        "test",
        "split clients evaluate on: `test`, or `val` (tuning; needs `data.val-fraction` > 0; "
        "test images never loaded)",
    )
    class_names: str = key(
        "",
        "label space, comma-separated prompt words (label i = entry i); an entry "
        "`folder=words` maps a folder whose name is not its class, e.g. "
        "`01_Grassland=grassland,04_RiverLake=river or lake` (docs/data.md); required with "
        "`data.partitioner=local`",
    )
    seed: int = key(0, "seed of the partition and of each client's splits", **_FED)
    skip_corrupt: bool = key(
        False, "corrupt images: skip and count (true) or stop with an error (false)", **_FED
    )
    verify: str = key(
        "open", "image check at listing: `none`, `open` (header, fast) or `decode`", **_FED
    )
    cross: str = key(
        "", "cross-dataset federation, `ucmerced:5,aid:5` (dataset:clients, ...)", **_FED
    )
    cross_roots: str = key("", "local roots for `data.cross`, `ucmerced=/d/ucm,aid=/d/aid`", **_FED)
    cross_aliases: str = key(
        "", "extra class-name merges, `port=harbor,farmland=agricultural`", **_FED
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the key and the fix for any impossible value."""
        from task.data.registry import REGISTRY

        if self.dataset not in REGISTRY:
            raise _err(
                "dataset",
                f"unknown dataset {self.dataset!r}",
                f"use one of {sorted(REGISTRY)} (imagefolder needs data.root)",
            )
        local = self.partitioner == "local"
        if self.dataset == "imagefolder" and not self.root and not self.cross and not local:
            raise _err("root", "dataset 'imagefolder' needs a local folder", "set data.root")
        if self.num_clients < 1:
            raise _err("num-clients", f"must be >= 1, got {self.num_clients}", "use 10, 20 or 40")
        if self.partitioner not in PARTITIONERS:
            raise _err(
                "partitioner", f"unknown partitioner {self.partitioner!r}", f"use {PARTITIONERS}"
            )
        if not self.alpha > 0:
            raise _err("alpha", f"must be > 0, got {self.alpha}", "use e.g. 0.1 .. 10")
        if self.classes_per_client < 1:
            raise _err(
                "classes-per-client", f"must be >= 1, got {self.classes_per_client}", "use e.g. 2"
            )
        if self.class_assignment not in CLASS_ASSIGNMENTS:
            raise _err(
                "class-assignment",
                f"unknown mode {self.class_assignment!r}",
                f"use {CLASS_ASSIGNMENTS}",
            )
        if self.min_client_size < 2:
            raise _err(
                "min-client-size",
                f"must be >= 2, got {self.min_client_size}",
                "every client needs >= 1 train and >= 1 test image; use >= 2",
            )
        self._validate_splits()
        names = self.class_name_list()  # checks the entries even when not required
        if local:
            self._validate_local(names)
        elif names and self.cross:
            raise _err(
                "class-names",
                "cannot be combined with data.cross (its label space is the harmonised union)",
                "leave data.class-names empty for cross-dataset federations",
            )
        if self.verify not in VERIFY_MODES:
            raise _err("verify", f"unknown mode {self.verify!r}", f"use {VERIFY_MODES}")
        if self.cross:
            self._validate_cross()

    def _validate_splits(self) -> None:
        """Test and validation fractions, and which split a run is scored on."""
        if not 0.0 < self.test_fraction < 1.0:
            raise _err(
                "test-fraction", f"must be in (0, 1), got {self.test_fraction}", "use e.g. 0.2"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise _err(
                "val-fraction", f"must be in [0, 1), got {self.val_fraction}", "use 0 or e.g. 0.2"
            )
        if self.holdout not in HOLDOUTS:
            raise _err("holdout", f"unknown split {self.holdout!r}", f"use {HOLDOUTS}")
        if self.holdout == "val" and self.val_fraction == 0.0:
            raise _err(
                "holdout",
                "'val' needs a validation split but data.val-fraction is 0",
                "set data.val-fraction > 0 (e.g. 0.2) or data.holdout=test",
            )

    def _validate_cross(self) -> None:
        """data.cross: the member datasets' client counts add up; roots name members."""
        groups = self.cross_groups()
        total = sum(k for _, k in groups)
        if total != self.num_clients:
            raise _err(
                "num-clients",
                f"is {self.num_clients} but data.cross={self.cross!r} asks for {total}",
                f"set data.num-clients={total}",
            )
        names = [n for n, _ in groups]
        for name, _ in self.cross_root_map().items():
            if name not in names:
                raise _err(
                    "cross-roots",
                    f"names {name!r}, which is not in data.cross",
                    f"use only {names}",
                )
        self.cross_alias_map()

    def _validate_local(self, names: list[str]) -> None:
        """partitioner=local: each node reads its own folder, so the run config names no data."""
        if not names:
            raise _err(
                "class-names",
                "is required with data.partitioner=local (nodes and server never see each "
                "other's folders, so the label space must come from the run config)",
                "set data.class-names to every class, comma-separated, e.g. "
                "'beach,dense residential,forest'",
            )
        if self.root or self.cross:
            raise _err(
                "root" if self.root else "cross",
                "is set, but with data.partitioner=local every node reads the folder in its "
                "node config (data-root) and the server reads no data",
                "leave data.root and data.cross empty; start each SuperNode with "
                '--node-config "data-root=/path/to/its/images ..."',
            )

    def class_entries(self) -> list[tuple[str, str]]:
        """`class_names` split into (folder, words) per entry; folder is "" for a plain entry.

        A plain entry (``beach``) is matched to a folder by name; ``folder=words`` (e.g.
        ``01_Grassland=grassland``) names the folder exactly, so folder names and prompt words
        may differ. Each malformed entry is a ValueError naming it.
        """
        raw = [p.strip() for p in self.class_names.split(",")]
        if raw == [""]:
            return []
        if "" in raw:
            raise _err(
                "class-names", f"has an empty entry in {self.class_names!r}", "remove extra commas"
            )
        out: list[tuple[str, str]] = []
        for entry in raw:
            folder, sep, words = (p.strip() for p in entry.partition("="))
            if not sep:
                out.append(("", entry))
                continue
            if not folder or not words or "=" in words:
                raise _err(
                    "class-names",
                    f"entry {entry!r} is not folder=words",
                    "write e.g. '01_Grassland=grassland' (one '=', a folder name on the left, "
                    "the class's prompt words on the right)",
                )
            out.append((folder, words))
        seen: dict[str, str] = {}
        for (folder, _), entry in zip(out, raw, strict=True):
            if folder and folder in seen:
                raise _err(
                    "class-names",
                    f"entries {seen[folder]!r} and {entry!r} both map folder {folder!r}",
                    "map each folder once",
                )
            seen[folder] = entry
        return out

    def class_name_list(self) -> list[str]:
        """`class_names` as prompt words (label i = entry i), normalised like folder names."""
        from task.data.classnames import class_key, humanize

        entries = self.class_entries()
        names = [humanize(words, self.dataset) for _, words in entries]
        keys = [class_key(n) for n in names]
        raw = [f"{f}={w}" if f else w for f, w in entries]
        dupes = sorted({e for e, k in zip(raw, keys, strict=True) if keys.count(k) > 1})
        if dupes:
            mapped = any("=" in e for e in dupes)
            what = "map two folders to one class" if mapped else "name the same class twice"
            fix = "merge the folders on disk to pool their images" if mapped else "list it once"
            raise _err("class-names", f"entries {dupes} {what}", fix)
        return names

    def class_folder_map(self) -> dict[str, int]:
        """{folder: label} for the ``folder=words`` entries of `class_names` (label = position)."""
        return {folder: i for i, (folder, _) in enumerate(self.class_entries()) if folder}

    def cross_groups(self) -> list[tuple[str, int]]:
        """Parse `cross` into [(dataset, n_clients), ...] in the given order."""
        return parse_cross(self.cross)

    def cross_root_map(self) -> dict[str, str]:
        """Parse `cross_roots` ("name=path,...") into {dataset: root}."""
        return _parse_pairs("cross-roots", self.cross_roots)

    def cross_alias_map(self) -> dict[str, str]:
        """Parse `cross_aliases` ("from=to,...") into {from words: to words}."""
        return {
            k.lower(): v.lower()
            for k, v in _parse_pairs("cross-aliases", self.cross_aliases).items()
        }


def _parse_pairs(key: str, text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise _err(key, f"bad entry {part!r}", "write name=value pairs separated by commas")
        out[name.strip()] = value.strip()
    return out


def parse_cross(text: str) -> list[tuple[str, int]]:
    """``"ucmerced:5,aid:5"`` -> [(dataset, n_clients), ...] in the given order; clients are
    numbered in this order (the first group gets partition ids 0..n-1)."""
    from task.data.registry import REGISTRY

    groups: list[tuple[str, int]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, count = part.partition(":")
        name = name.strip()
        if not sep or not count.strip().isdigit() or int(count) < 1:
            raise _err(
                "cross", f"bad entry {part!r}", "write dataset:clients, e.g. 'ucmerced:5,aid:5'"
            )
        if name not in REGISTRY:
            raise _err("cross", f"unknown dataset {name!r}", f"use one of {sorted(REGISTRY)}")
        if name in [n for n, _ in groups]:
            raise _err("cross", f"dataset {name!r} is listed twice", "list it once")
        groups.append((name, int(count)))
    if len(groups) < 1:
        raise _err("cross", "is empty", "write e.g. 'ucmerced:5,aid:5' or leave it ''")
    return groups
