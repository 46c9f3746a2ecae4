"""Cross-dataset federations judged by member dataset.

A cross-dataset federation's pooled accuracy mixes datasets of very different sizes (an AID
client holds five times a UC Merced one's images), and a backbone may have been built with one
of them (the stand-in was aligned on AID): a number over that member says nothing about the
method. So the accuracy tables and paired differences show each member dataset's clients as a
column of their own, ``cross ucmerced:5+aid:5 even · ucmerced clients``, and leave out the
members named *seen* (``--seen-datasets``), saying so.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace

from task.report.grouping import Group
from task.report.stats import cross_members, member_accuracy


def member_label(federation: str, member: str) -> str:
    return f"{federation} · {member} clients"


def _member_group(g: Group, member: str) -> Group:
    """The group with each run's accuracies those of ``member``'s clients alone (no best
    round or curve: only the final round is recorded per client)."""
    stats = []
    for run, st in zip(g.runs, g.stats, strict=True):
        pers, glob = member_accuracy(run).get(member, (None, None))
        stats.append(replace(st, personalised=pers, global_=glob, best_personalised=None, curve=[]))
    return Group(
        g.setup, member_label(g.federation, member), g.method, g.runs, stats, member=member
    )


def member_views(
    feds: Mapping[str, Mapping[str, Group]], seen: Collection[str] = ()
) -> tuple[dict[str, dict[str, Group]], list[str]]:
    """(federations with each cross-dataset one split into its unseen members, the labels
    of the members left out). Plain federations pass through unchanged."""
    out: dict[str, dict[str, Group]] = {}
    left_out: list[str] = []
    for f, groups in feds.items():
        example = next(iter(groups.values())).runs[0]
        members = [name for name, _ in cross_members(example.config)]
        if not members:
            out[f] = dict(groups)
            continue
        for name in members:
            if name in seen:
                left_out.append(member_label(f, name))
                continue
            out[member_label(f, name)] = {m: _member_group(g, name) for m, g in groups.items()}
    return out, left_out
