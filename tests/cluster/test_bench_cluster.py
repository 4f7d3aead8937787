"""benchmarks/bench_cluster.py's arithmetic and tables, on made-up measurements (no cluster needed)."""

from __future__ import annotations

from benchmarks import bench_cluster


def row(workers: int, phase: float) -> dict:
    return {
        "workers": workers,
        "tasks": 4,
        "units": 8,
        "images": 8000,
        "units_phase_s": phase,
        "unit_work_s": 8.0,
        "work_per_image_us": 1000.0,
        "overhead_per_task_s": (phase * workers - 8.0) / 4,
        "task_wall_s": 5.0,
        "task_work_s": 2.0,
        "task_own_overhead_s": 3.0,
        "queued_to_start_s": 0.5,
    }


def test_task_size_for_five_percent():
    # 3 s of overhead per task at 1 ms of work per image: 60 s of work = 60,000 images per task.
    assert round(bench_cluster.images_for_target(row(1, 20.0))) == 60_000


def test_tables():
    rows = [row(1, 20.0), row(2, 12.0)]
    table = bench_cluster.format_rows(rows)
    assert "| 2 | 4 x 2.0 | 8,000 | 12.0 s | 1.67x |" in table
    assert "**3.0 s**" in table and "**4.0 s**" in table
    imagenet = bench_cluster.format_imagenet(rows, fanouts=(8,))
    assert "| 8 | 166,396 | 166 s | 2.4% |" in imagenet
