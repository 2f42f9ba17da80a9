"""benchmarks/auto_search.py's pure helpers on made-up numbers: the goal-2 and goal-3 verdicts, the
phases read from timestamped progress lines, the relative error and the tables (no timing, no
search: the benchmark itself is run by hand, see benchmarks/README.md)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.support import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "auto_search.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(SCRIPT, "auto_search_benchmark")


def _lat(median, low, high, rounds=5):
    return {"median": median, "low": low, "high": high, "rounds": rounds}


def _conv(label, error, latency, choice=None):
    return {"label": label, "error": error, "latency": latency, "choice": choice}


def test_reaches_compares_the_fastest_round_with_the_mix_slowest(bench):
    mix = _lat(5.0, 4.8, 5.2)
    assert bench.reaches(_lat(6.0, 5.2, 6.5), mix) is True  # touches the mix's range
    assert bench.reaches(_lat(4.0, 3.9, 4.1), mix) is True  # faster
    assert bench.reaches(_lat(6.0, 5.21, 6.5), mix) is False  # every round slower than the mix's slowest
    assert bench.reaches(None, mix) is None and bench.reaches(mix, None) is None


def test_reaches_paired_uses_the_per_round_ratio(bench):
    mix = [5.0, 5.5, 5.0, 6.0]
    assert bench.reaches_paired(mix, [5.5, 6.0, 5.5, 6.5]) is False  # slower in every round
    assert bench.reaches_paired(mix, [5.5, 5.0, 5.5, 6.5]) is True  # within noise: faster in one round
    assert bench.reaches_paired(mix, [4.0, 4.5, 4.0, 5.0]) is True  # faster
    # the ranges overlap (5.5 <= 6.0), yet every paired round is slower: the looser test says yes
    assert bench.reaches(bench.spread_dict(bench.Spread.of([5.5, 6.0, 5.5, 6.5])),
                         bench.spread_dict(bench.Spread.of(mix))) is True


def test_judge_decides_from_stored_numbers(bench):
    def row(label, error, samples, deployed):
        return {"label": label, "error": error, "samples": samples, "deployed_error": deployed,
                "latency": bench.spread_dict(bench.Spread.of(samples))}

    results = {"conversions": [row("dense", 0.0, [10.0, 10.2, 10.1], 0.008),
                               row("mix", 0.0291, [4.5, 4.2, 4.4], 0.0298),
                               row("asymmetric", 0.02909, [4.9, 4.8, 4.5], 0.0301),  # slower every round
                               row("dsconv", 0.0325, [4.9, 4.1, 4.3], 0.0333)],  # within noise
               "single_searches": [{"label": "asymmetric"}, {"label": "dsconv"}],
               "search_time": {"cold": {"seconds": 170.0}, "warm": {"seconds": 31.0}}}
    judged = bench.judge(results)
    rows = {r["label"]: r for r in judged["conversions"]}
    assert rows["asymmetric"]["reaches_mix"] is False and rows["asymmetric"]["reaches_mix_ranges"] is True
    assert rows["dsconv"]["reaches_mix"] is True and "within noise" in rows["dsconv"]["vs_mix"]
    assert judged["fidelity"]["verdict"] == "holds" and judged["fidelity"]["rival"] == "dsconv"
    assert judged["fidelity_ranges"]["verdict"] == "does not hold" and judged["fidelity_ranges"]["rival"] == "asymmetric"
    assert "0.029100 is higher by 0.03% than that of asymmetric (0.029090)" in judged["fidelity_ranges"]["text"]
    assert judged["fidelity_deployed"]["verdict"] == "holds"
    assert judged["search_time"]["verdict"]["cold_met"] and not judged["search_time"]["verdict"]["warm_met"]
    results["conversions"][2]["deployed_error"] = "failed: RuntimeError"
    assert bench.judge(results)["fidelity_deployed"]["verdict"] == "not measured"


def test_goal_2_holds_when_the_mix_beats_the_best_rival_that_reaches_it(bench):
    mix = _conv("mix", 0.10, _lat(5.0, 4.8, 5.2), {"a": "dsconv m=1", "b": "tucker2 (8, 8)"})
    singles = [_conv("dsconv", 0.15, _lat(5.1, 5.0, 5.3)),
               _conv("tucker2", 0.12, _lat(5.0, 4.9, 5.4)),
               _conv("grouped", 0.05, _lat(7.0, 6.8, 7.2))]  # lower error but slower: not a rival
    verdict = bench.fidelity_verdict(mix, singles)
    assert verdict["verdict"] == "holds" and verdict["holds"] is True and verdict["rival"] == "tucker2"
    assert "0.1000 is lower than that of tucker2 (0.1200)" in verdict["text"]
    assert "of 2 that do: dsconv, tucker2" in verdict["text"]


def test_goal_2_fails_when_a_rival_at_the_same_latency_has_less_error(bench):
    mix = _conv("mix", 0.20, _lat(5.0, 4.8, 5.2))
    verdict = bench.fidelity_verdict(mix, [_conv("dsconv", 0.15, _lat(4.9, 4.7, 5.0))])
    assert verdict["verdict"] == "does not hold" and verdict["holds"] is False and verdict["rival"] == "dsconv"
    assert "is higher than" in verdict["text"]


def test_goal_2_tie_and_no_rival_and_not_measured(bench):
    choice = {"a": "dsconv m=1"}
    mix = _conv("mix", 0.0383, _lat(5.0, 4.8, 5.2), choice)
    tie = bench.fidelity_verdict(mix, [_conv("dsconv", 0.0383, _lat(5.0, 4.9, 5.1), dict(choice))])
    assert tie["verdict"] == "tie" and tie["holds"] is None and "very same conversion" in tie["text"]
    equal = bench.fidelity_verdict(mix, [_conv("tucker2", 0.0383, _lat(5.0, 4.9, 5.1), {"a": "tucker2 (4, 4)"})])
    assert equal["verdict"] == "tie" and "errors are equal" in equal["text"]
    none = bench.fidelity_verdict(mix, [_conv("dsconv", 0.01, _lat(9.0, 8.0, 10.0)), _conv("tucker2", 0.02, None)])
    assert none["verdict"] == "no single kind reaches the mix's latency" and none["holds"] is None
    missing = bench.fidelity_verdict(_conv("mix", 0.1, None), [_conv("dsconv", 0.2, _lat(1, 1, 1))])
    assert missing["verdict"] == "not measured"


def test_goal_3_verdict(bench):
    ok = bench.time_verdict(120.0, 12.5)
    assert ok["holds"] and ok["cold_met"] and ok["warm_met"]
    assert ok["text"] == "empty cache 120.0 s (< 180 s goal), warm cache 12.5 s (< 30 s goal)"
    slow = bench.time_verdict(200.0, 30.0)
    assert not slow["holds"] and not slow["cold_met"] and not slow["warm_met"]
    assert "200.0 s (>= 180 s goal)" in slow["text"] and "30.0 s (>= 30 s goal)" in slow["text"]


def test_phases_from_timestamped_progress_lines(bench):
    lines = [(0.5, "measuring the dense model on openvino (fp32, bf16, int8)"),
             (10.5, "layer 1/2 a: fitting candidates"), (12.5, "layer 2/2 b: fitting candidates"),
             (15.0, "timing layer 1/2 a at (1, 64, 56, 56) in int8"), (20.0, "timing layer 2/2 b at (1, 64, 56, 56) in int8"),
             (22.0, "measuring the whole converted model (attempt 1, predicted 4.000 ms)"),
             (24.0, "timing layer 1/2 a at (1, 64, 56, 56) in fp32"),
             (25.0, "measuring the whole converted model (attempt 1, predicted 6.000 ms)")]
    out = bench.phases(lines, 30.0)
    assert out == {"setup": 0.5, "dense baseline": 10.0, "fit candidates": 4.5, "time candidates": 8.0,
                   "whole-model measurements": 2.0, bench.LAST_PHASE: 5.0}
    assert math.isclose(sum(out.values()), 30.0)
    assert bench.phases([], 3.0) == {"setup": 3.0}
    assert bench.phase_of("something new") == "other"


def test_relative_error(bench):
    reference = torch.tensor([[3.0, 4.0]])
    assert bench.relative_error(reference, reference) == 0.0
    assert math.isclose(bench.relative_error(torch.tensor([[3.0, 4.5]]), reference), 0.1)


def test_tables_from_made_up_rows(bench):
    rows = [{"label": "dense", "error": 0.0, "latency": _lat(10.0, 9.5, 10.5), "mac_ratio": 1.0,
             "speedup_text": "1 (the dense model at its best)"},
            {"label": "mix", "error": 0.1, "latency": _lat(5.0, 4.8, 5.2), "mac_ratio": 0.3, "kinds": ["dsconv", "tucker2"],
             "converted_layers": 15, "layers": 16, "met": True, "speedup_text": "2.00x (1.90-2.10)"},
            {"label": "grouped", "error": 0.3, "latency": None, "not_measured": "output differs", "mac_ratio": 0.5,
             "kinds": ["grouped"], "converted_layers": 16, "layers": 16, "met": False, "reaches_mix": None}]
    table = bench.conversions_table(rows)
    assert len(table) == 2 + len(rows) and all(line.count("|") == table[0].count("|") for line in table)
    assert "| mix | dsconv, tucker2 | 15 / 16 | 0.300 | 5.000 (4.800-5.200) | 2.00x (1.90-2.10) |" in table[3]
    assert "not measured: output differs" in table[4] and table[4].endswith("| - / - | no |")
    assert "| 0.1000 | - |" in table[3]  # no error as deployed given: a dash
    timing = [{"label": "mix (empty cache)", "seconds": 100.0, "cpu_seconds": 150.0, "load_before": [2.0, 1.5, 1.0],
               "load_after": None, "phases": {"setup": 1.0, "fit candidates": 99.0}, "attempts": [{}, {}],
               "final_attempt": 2, "cache_entries_after": 300, "torch_threads": 2}]
    search = bench.search_table(timing)
    assert search[2] == "| mix (empty cache) | 2 | 100.0 | 150.0 | 2.00/1.50/1.00 | - | 1.0 | 99.0 | 2 (2) | 300 |"
    assert search[0].count("|") == search[1].count("|") == search[2].count("|")
