"""results/complexity.md is generated, never hand-edited: regenerate and compare."""

from src import complexity as table


def test_committed_complexity_table_is_fresh():
    fresh = table.build_table()
    committed = table.DEFAULT_OUT.read_text()
    assert committed == fresh, "results/complexity.md is stale: run `make complexity`"
    assert "| struct_resnet56_a | A `cifar_resnet_a.yaml` | 32x32 |" in fresh
