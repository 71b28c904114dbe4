"""pytest-benchmark suite of the core: each op side by side with torch, NumPy and a bandwidth probe.

Run:  python -m pytest benchmarks -q --benchmark-group-by=group --benchmark-columns=median,iqr,rounds
Each group is one (op, dtype, shape) case; compare the rows of a group, not numbers across runs.
`geonorm bench` prints the same cases as GB/s and ratios.
"""
import pytest

from geonorm_core.experiments import bench

CONTENDERS = ("geonorm", "torch", "torch_two_pass", "numpy", "probe")


@pytest.fixture(scope="module")
def cases():
    """Inputs are built once per case and shared by its contenders (a case's arrays are freed after it)."""
    cache = {}

    def get(case):
        if case not in cache:
            cache.clear()
            cache[case] = bench.contenders(*case)
        return cache[case]

    return get


@pytest.mark.parametrize("case", bench.CASES, ids=lambda c: f"{c[0]}-{c[3]}-{c[1]}x{c[2]}")
@pytest.mark.parametrize("who", CONTENDERS)
def test_speed(benchmark, cases, case, who):
    nbytes, fns = cases(case)
    if who not in fns:
        pytest.skip(f"{who} does not compete in {case[0]}")
    benchmark.group = f"{case[0]} {case[3]} {case[1]}x{case[2]}"
    benchmark.extra_info["bytes"] = nbytes
    benchmark.extra_info["geonorm"] = bench.kernel_info()
    rounds = 2 if who == "numpy" else 7
    benchmark.pedantic(fns[who], rounds=rounds, warmup_rounds=1)
