"""Print the worst ulp error per schedule table against 50-digit mpmath: python -m tests.oracle.report_ulp"""

from __future__ import annotations

from refdiff.schedules import TABLE_NAMES

from .schedule_cases import CASES, respaced_case, worst_table_errors


def main() -> None:
    worst = dict.fromkeys(TABLE_NAMES, (0.0, ""))
    runs = [(case, *CASES[case]) for case in sorted(CASES)]
    for case, build, exact in runs:
        ab, betas = exact()
        for name, (err, _) in worst_table_errors(build(), ab, betas).items():
            if err >= worst[name][0]:
                worst[name] = (err, case)
    s, ab = respaced_case()
    for name, (err, _) in worst_table_errors(s, ab, None).items():
        if err >= worst[name][0]:
            worst[name] = (err, "linear-T1000 respaced ddim50")
    print("| table | worst ulp | case |\n|---|---|---|")
    for name, (err, case) in worst.items():
        print(f"| {name} | {err:.3f} | {case} |")


if __name__ == "__main__":
    main()
