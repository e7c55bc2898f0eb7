"""`parrot bench attention` on a small case: it runs every kernel variant this machine has and
writes what it printed as JSON."""

from __future__ import annotations

import json

import pytest

from loadtest import bench_attention
from parrot_kernels import native

LIB = native.load()


@pytest.mark.skipif(LIB is None, reason="no C kernels here")
def test_kernel_part_runs_each_variant_and_writes_json(tmp_path, capsys):
    out = tmp_path / "attention.json"
    argv = ["--no-engine", "--prompts", "64", "--rows", "6", "--layers", "2", "--repeat", "2"]
    assert bench_attention.main([*argv, "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    expected = {"paged"}
    if LIB.shared is not None:
        expected.add("shared, vectors")
        if LIB.shared.tiles:
            expected.add("shared, tiles")
    assert set(res["kernels"]) == expected
    for runs in res["kernels"].values():
        assert len(runs["hot"]) == len(runs["cold"]) == 2
        assert all(ms > 0 for ms in runs["hot"] + runs["cold"])
    printed = capsys.readouterr().out
    assert all(name in printed for name in expected)


def test_prompts_must_be_whole_blocks():
    with pytest.raises(SystemExit):
        bench_attention.main(["--prompts", "100", "--no-engine"])
