"""The pure parts of bench/e2e_bench.py: percentiles, the table, the docs rewrite between markers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("e2e_bench", ROOT / "bench" / "e2e_bench.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["e2e_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _load()


def test_percentile_interpolates_and_refuses_nothing() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert bench.percentile(values, 50) == 3.0
    assert bench.percentile(values, 0) == 1.0
    assert bench.percentile(values, 100) == 5.0
    assert bench.percentile(values, 99) == pytest.approx(4.96)
    assert bench.percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        bench.percentile([], 50)


def _result(system: str, drain_s: float, lat: list[float], cpu_s: float) -> object:
    return bench.RoundResult(
        system=system,
        jobs=100,
        enqueue_s=1.0,
        drain_s=drain_s,
        latencies_ms=lat,
        submit_ms=[1.0],
        server_cpu_s=cpu_s,
        db_cpu_s=cpu_s,
        worker_cpu_s=0.1,
        xacts=700,
        idle_xacts_per_s=0.5,
        server_rss_mb=150.0,
        load=1.0,
    )


def test_table_has_every_system_medians_and_ratios_vs_celery() -> None:
    results = [
        _result("morag-pg", 2.0, [10.0, 20.0], 0.5),  # 50 jobs/s, 10 ms server+db a job
        _result("morag-pg", 1.0, [30.0], 0.5),  # 100 jobs/s
        _result("morag-pg", 4.0, [40.0], 0.5),  # 25 jobs/s
        _result("celery", 0.5, [2.0, 4.0], 0.05),  # 200 jobs/s
    ]
    table = bench.render_table(results, ["morag-pg", "celery", "pgqueuer"])
    lines = table.splitlines()
    assert lines[0] == "| | morag-remote (PostgreSQL) | Celery 5 + Redis |"  # no column for a system not run
    drain = next(x for x in lines if x.startswith("| drain, jobs/s"))
    assert "**50 (25-100)**" in drain and "**200**" in drain
    assert "| drain vs Celery | 0.25x | 1.00x |" in lines
    lat = next(x for x in lines if x.startswith("| dispatch latency"))
    assert "25.0 / 39.7" in lat  # pooled over rounds: [10, 20, 30, 40]
    assert "| server + database CPU vs Celery | 10.00x | 1.00x |" in lines
    assert "| database transactions per job (Celery: Redis commands) | 7.0 | 7.0 |" in lines


def test_rewrite_section_inserts_once_then_replaces_between_markers() -> None:
    doc = "# Benchmarks\n\n## Media\n\ntext\n\n## Queue (job table)\n\nold numbers\n"
    first = bench.rewrite_section(doc, "## Queue end to end\n\nrun 1")
    assert first.index("run 1") < first.index("## Queue (job table)")
    assert first.count(bench.MARK_START) == 1 and "old numbers" in first and "## Media\n\ntext" in first
    second = bench.rewrite_section(first, "## Queue end to end\n\nrun 2")
    assert "run 1" not in second and "run 2" in second
    assert second.count(bench.MARK_START) == 1 and second.count(bench.MARK_END) == 1
    assert second.replace("run 2", "run 1") == first  # nothing else moved
    assert bench.rewrite_section("# B\n", "x").endswith(f"{bench.MARK_START}\nx\n{bench.MARK_END}\n")
