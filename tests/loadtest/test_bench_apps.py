"""`parrot bench apps` bookkeeping: repeated passes reduce to the median run per case."""

from __future__ import annotations

from loadtest.bench_apps import median_sample, table


def test_the_median_run_is_kept_with_every_sample_on_record() -> None:
    runs = [{"e2e_s": 9.0, "tag": "slow"}, {"e2e_s": 2.0, "tag": "fast"}, {"e2e_s": 4.0}]
    kept = median_sample("chain", runs)
    assert kept["e2e_s"] == 4.0 and kept["samples"] == [9.0, 2.0, 4.0]
    # An even count keeps the lower middle run, a real run rather than an average of two.
    assert median_sample("chain", runs[:2])["tag"] == "fast"


def test_the_table_ratios_compare_each_system_with_parrot() -> None:
    results = {
        "map_reduce|8x200tok/25out|rtt=0ms": {
            "parrot": median_sample("map_reduce", [{"e2e_s": 2.0}]),
            "baseline": median_sample("map_reduce", [{"e2e_s": 5.0}]),
        }
    }
    line = table(results).splitlines()[-1]
    assert line.split()[1:4] == ["2.000", "5.000", "2.50"]
