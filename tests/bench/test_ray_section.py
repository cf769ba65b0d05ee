"""The ray section's table: Serve beside `triserve serve`, per concurrency, from interleaved rounds
(no cluster here: the section itself runs in `triserve bench --sections ray`)."""

from __future__ import annotations

from triserve.bench.ray_section import ray_table
from triserve.bench.results import Result


def _rounds(label: str, rows: list[tuple[float, float]]) -> list[Result]:
    return [Result(label, images, p50, p50 * 2) for images, p50 in rows]


def test_the_table_gives_the_added_time_per_request_and_the_throughput_ratios():
    direct = {1: _rounds("triserve serve, concurrency 1", [(100, 10.0), (50, 20.0), (100, 10.0)]),
              8: _rounds("triserve serve, concurrency 8", [(200, 40.0), (200, 40.0), (100, 80.0)])}
    through = {1: _rounds("through Ray Serve, concurrency 1", [(50, 30.0), (20, 45.0), (40, 35.0)]),
               8: _rounds("through Ray Serve, concurrency 8", [(100, 80.0), (150, 60.0), (60, 120.0)])}
    table = ray_table("m", direct, through)
    # rows: medians of the rounds, each divided by triserve serve's at the same concurrency
    assert [(r.label, r.images_per_s, round(r.ratio(d), 2)) for r, d in table.rows] == [
        ("triserve serve, concurrency 1", 100, 1.0), ("through Ray Serve, concurrency 1", 40, 0.4),
        ("triserve serve, concurrency 8", 200, 1.0), ("through Ray Serve, concurrency 8", 100, 0.5)]
    # per round: +20, +25, +25 ms; ratios 0.5, 0.4, 0.4 at 1 and 0.5, 0.75, 0.6 at 8 (medians of each round's)
    assert table.summary == ["ray: added per request through Serve (p50 at concurrency 1, median over rounds): +25.00 ms;"
                             " throughput ratio 0.40 at concurrency 1, 0.60 at concurrency 8"]
    assert "median of 3 rounds" in table.notes[-1] and "0.40 x the requests/s" in table.notes[0]
    assert "ray: m over binary v2 HTTP" in table.render()
