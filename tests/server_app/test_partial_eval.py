"""server.fraction-evaluate < 1 (separate evaluation): each round asks a seeded sample of the nodes
to evaluate, the averages are over that sample alone, and a replay samples alike."""

from __future__ import annotations

from tests.reliability.helpers import rows, run, setup_run


def test_a_fraction_of_the_nodes_evaluates_each_round(tmp_path, tiny_clip_dir):
    overrides = {"server.num-rounds": 2, "server.eval-mode": "separate",
                 "server.fraction-evaluate": 0.5, "server.min-nodes": 4}  # fmt: skip
    cfg = setup_run(tmp_path, tiny_clip_dir, num_clients=4, **overrides)
    grid = run(cfg)
    evaluations = [m for m in grid.sent if m.metadata.message_type == "evaluate"]
    assert len(evaluations) == 2 * 2  # half of 4 nodes, in each of 2 rounds
    for r in rows(cfg):
        scored = [p for p, v in r["per_client"].items() if "personalised_accuracy" in v]
        assert len(scored) == 2 and r["evaluated"] is True
        accs = [r["per_client"][p]["personalised_accuracy"] for p in scored]
        tests = [r["per_client"][p]["num_test"] for p in scored]
        mean = sum(a * n for a, n in zip(accs, tests, strict=True)) / sum(tests)
        assert abs(r["personalised_accuracy"] - mean) < 1e-12
    # The sample is seeded per round: a second run asks the same partitions.
    again = run({**cfg, "run.name": "again"})

    def sampled(g) -> list[int]:  # partition of each evaluate message, in order
        return [
            g.node_ids.index(m.metadata.dst_node_id)
            for m in g.sent
            if m.metadata.message_type == "evaluate"
        ]

    assert sampled(grid) == sampled(again)
