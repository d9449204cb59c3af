"""Part (a) of the streaming benchmark: the marginal rate and the labelled ratios and goals
(on a synthetic result; no Beam run)."""

from __future__ import annotations

import math

from benchmarks.bench_streaming import BEAM_KINDS, LARGE_KINDS, marginal_rate, part_a_ratios


def test_marginal_rate_cancels_fixed_cost() -> None:
    # 0.2 s fixed cost + 10 us per record: the marginal rate is 100,000 records/s.
    assert math.isclose(marginal_rate(50_000, 0.7, 200_000, 2.2), 100_000)
    assert math.isnan(marginal_rate(50_000, 0.7, 200_000, 0.7))  # not slower: no rate
    assert math.isnan(marginal_rate(50_000, 0.7, 50_000, 0.9))


def _runner(small: float, large: float, marginal: float) -> dict:
    res = {f"ratio_{k}_end_to_end": small for k in BEAM_KINDS}
    res["ratio_ae_active"] = 3.0
    res["large"] = {f"ratio_{k}_end_to_end": large for k in LARGE_KINDS}
    res["marginal"] = {f"ratio_{k}": marginal for k in LARGE_KINDS}
    return res


def test_part_a_ratios_are_labelled_by_measurement() -> None:
    beam = {
        "records": 50_000,
        "large_records": 200_000,
        "fnapi": _runner(small=8.0, large=11.0, marginal=12.0),
        "prism": _runner(small=7.0, large=9.0, marginal=10.5),
    }
    ratios, goals, headline = part_a_ratios(beam)
    assert ratios["ratio_beam_fnapi_ae_over_beam_zscore_end_to_end_50k"] == 8.0
    assert ratios["ratio_beam_fnapi_ae_batched_over_beam_zscore_end_to_end_200k"] == 11.0
    assert ratios["ratio_beam_prism_ae_over_beam_zscore_marginal_50k_200k"] == 10.5
    assert "ratio_beam_prism_naive_zscore_over_beam_zscore_end_to_end_50k" in ratios
    assert "ratio_beam_prism_naive_zscore_over_beam_zscore_end_to_end_200k" not in ratios
    # The headline goal and the 50,000-record one, each named by what it measures.
    assert goals["beam_fnapi_ae_ge_10x_end_to_end_200k"] is True
    assert goals["beam_prism_ae_batched_ge_10x_end_to_end_200k"] is False
    assert goals["beam_fnapi_ae_ge_10x_end_to_end_50k"] is False
    assert headline is not None and headline.startswith("end_to_end_200k: ")
    assert "200,000 records" in headline


def test_part_a_ratios_without_large_size() -> None:
    beam = {"records": 20_000, "large_records": None, "fnapi": _runner(12.0, 0.0, 0.0)}
    ratios, goals, headline = part_a_ratios(beam)
    assert goals == {
        "beam_fnapi_ae_ge_10x_end_to_end_20k": True,
        "beam_fnapi_ae_batched_ge_10x_end_to_end_20k": True,
    }
    assert not any("200k" in k for k in ratios)
    assert headline is not None and headline.startswith("end_to_end_20k")
    assert part_a_ratios({}) == ({}, {}, None)
