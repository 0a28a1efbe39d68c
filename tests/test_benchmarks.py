"""The benchmark scripts run and print the JSON their issues ask for (tiny sizes here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_build_benchmark_prints_rates_and_ratios():
    p = subprocess.run(
        [sys.executable, "benchmarks/build.py", "--n", "4", "--repeat", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["images"] == 8
    for key in (
        "a_decode_only_img_s",
        "b_plain_loop_img_s",
        "c_infmix_full_res_img_s",
        "c_infmix_max_side_img_s",
        "c_infmix_max_side_verify_passthrough_img_s",
        "c_infmix_max_side_with_near_dedup_img_s",
    ):
        assert result[key] > 0
    b, c = result["b_plain_loop_img_s"], result["c_infmix_max_side_img_s"]
    assert result["ratio_c_max_side_over_b"] == pytest.approx(c / b, rel=0.01)
    assert isinstance(result["target_met_max_side"], bool)


@pytest.mark.slow
def test_dedup_benchmark_prints_scale_and_recall():
    p = subprocess.run(
        [
            sys.executable,
            "benchmarks/dedup.py",
            "--sizes",
            "60000",
            "--recall-queries",
            "300",
            "--embed-images",
            "100",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    run = result["sizes"]["60000"]  # above flat_max: the IVF path
    assert run["wall_s"] > 0 and run["peak_gib"] > 0
    assert run["pairs"] >= 0.98 * run["planted_pairs"] * 0.99
    assert run["ivf_recall_vs_exact"] >= 0.98
    assert result["embedder"]["images_per_s_per_core"] > 0


def _run_json(*args: str) -> dict:
    p = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_loader_benchmark_prints_both_rates_and_the_ratio():
    args = ("--n", "40", "--batch-size", "8", "--repeat", "1", "--shuffle-buffer", "32")
    r = _run_json("benchmarks/loader.py", *args)
    ours, base = r["unip_img_s_per_core"], r["baseline_img_s_per_core"]
    assert ours > 0 and base > 0
    assert r["ratio_unip_over_baseline"] == pytest.approx(ours / base, rel=0.01)


@pytest.mark.slow
def test_distill_step_benchmark_prints_both_rates_and_the_ratio():
    r = _run_json("benchmarks/distill_step.py", "--steps", "1", "--cpu-only")
    cpu = r["cpu"]
    assert cpu["ours_img_s"] > 0 and cpu["baseline_img_s"] > 0
    assert cpu["ratio"] == pytest.approx(cpu["ours_img_s"] / cpu["baseline_img_s"], rel=0.01)


@pytest.mark.slow
def test_segment_benchmark_prints_both_rates_and_the_ratio():
    r = _run_json("benchmarks/segment.py", "--image-size", "64", "--steps", "1", "--cpu-only")
    train, slide = r["cpu"]["train"], r["cpu"]["slide_inference"]
    assert train["train_img_s"] > 0 and slide["single_window_img_s"] > 0
    ratio = slide["batched_windows_img_s"] / slide["single_window_img_s"]
    assert slide["ratio_batched_over_single"] == pytest.approx(ratio, rel=0.02)
    assert slide["max_abs_logit_diff"] < 1e-4  # batching windows changes no logit
