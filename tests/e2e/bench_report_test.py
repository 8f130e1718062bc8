#!/usr/bin/env python3
"""scripts/bench/report.py: medians, paired ratios, their intervals and verdicts."""
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPORT = os.path.join(HERE, "..", "..", "scripts", "bench", "report.py")
sys.path.insert(0, os.path.dirname(REPORT))
import report  # noqa: E402


def write(path, lines):
    with open(path, "w") as f:
        f.write("".join("\t".join(str(x) for x in line) + "\n" for line in lines))


class MedianInterval(unittest.TestCase):
    def test_six_values_reach_95_percent_with_the_whole_range(self):
        m, lo, hi, cov = report.median_interval([5, 1, 4, 2, 6, 3])
        self.assertEqual((m, lo, hi), (3.5, 1, 6))
        self.assertAlmostEqual(cov, 1 - 2 / 64)

    def test_five_values_say_their_lower_coverage(self):
        _, lo, hi, cov = report.median_interval([1, 2, 3, 4, 5])
        self.assertEqual((lo, hi), (1, 5))
        self.assertAlmostEqual(cov, 1 - 2 / 32)
        self.assertLess(cov, 0.95)

    def test_more_values_narrow_the_interval(self):
        # n = 9: P(X <= 1) = 10/512, so [x(2), x(8)] covers 96 %.
        _, lo, hi, cov = report.median_interval(list(range(1, 10)))
        self.assertEqual((lo, hi), (2, 8))
        self.assertAlmostEqual(cov, 1 - 2 * 10 / 512)


class Verdict(unittest.TestCase):
    def test_beats_only_when_the_interval_excludes_one(self):
        self.assertEqual(report.verdict(0.7, 0.9, False), "beats")
        self.assertEqual(report.verdict(1.1, 1.3, True), "beats")
        self.assertEqual(report.verdict(0.9, 1.1, False), "not resolved (the interval holds 1)")
        self.assertEqual(report.verdict(1.1, 1.3, False), "behind")
        self.assertEqual(report.verdict(0.7, 0.9, True), "behind")


class Report(unittest.TestCase):
    def run_report(self, results):
        with tempfile.TemporaryDirectory() as d:
            r, m = os.path.join(d, "results.tsv"), os.path.join(d, "meta.tsv")
            write(r, results)
            write(m, [("columns", "direct haproxy-2hop clusterconnect"), ("rounds", "6")])
            return subprocess.run([sys.executable, REPORT, "--results", r, "--meta", m],
                                  check=True, capture_output=True, text=True).stdout

    @staticmethod
    def table(out, header):
        lines = out.splitlines()
        start = lines.index(next(line for line in lines if line.startswith(header)))
        rows = []
        for line in lines[start + 2:]:
            if not line.startswith("|"):
                break
            rows.append(line)
        return rows

    def test_pairs_rounds_and_a_repeated_round_replaces_the_first(self):
        rows = []
        for r in range(1, 7):
            rows += [("direct", "p50_ms", 0.1, r), ("haproxy-2hop", "p50_ms", 0.2, r),
                     ("clusterconnect", "p50_ms", 0.1 + 0.01 * r, r),
                     ("haproxy-2hop", "rps", 1000, r), ("clusterconnect", "rps", 900 + 20 * r, r)]
        # A first attempt of round 3 that ran beside other work, then its repeat.
        rows.insert(0, ("clusterconnect", "p50_ms", 5.0, 3))
        out = self.run_report(rows)
        paired = self.table(out, "| clusterconnect / haproxy-2hop |")
        # Ratios 0.55 ... 0.80 (the 5.0 replaced): the median and the whole range.
        self.assertIn("| small GET p50 ms (1 conn) | 0.68 | 0.55 – 0.80 (97 %) | 6 | beats |", paired)
        rps = next(line for line in paired if line.startswith("| requests/s"))
        # 0.92 ... 1.02: the interval holds 1.
        self.assertIn("not resolved", rps)

    def test_pairs_with_each_haproxy_column_separately(self):
        rows = []
        for r in range(1, 7):
            rows += [("direct", "p50_ms", 0.1, r), ("haproxy-2hop", "p50_ms", 0.2, r),
                     ("haproxy-3hop", "p50_ms", 0.4, r), ("clusterconnect", "p50_ms", 0.3, r)]
        out = self.run_report(rows)
        self.assertIn("| small GET p50 ms (1 conn) | 1.50 | 1.50 – 1.50 (97 %) | 6 | behind |",
                      self.table(out, "| clusterconnect / haproxy-2hop |"))
        self.assertIn("| small GET p50 ms (1 conn) | 0.75 | 0.75 – 0.75 (97 %) | 6 | beats |",
                      self.table(out, "| clusterconnect / haproxy-3hop (the same shape) |"))
        # The column sits between haproxy-2hop and tcp-splice in the figures table.
        header = next(line for line in out.splitlines() if line.startswith("| figure |"))
        self.assertIn("| haproxy-2hop | haproxy-3hop | clusterconnect |", header)

    def test_no_verdict_below_95_percent(self):
        rows = []
        for r in range(1, 6):
            rows += [("haproxy-2hop", "p50_ms", 0.2, r), ("clusterconnect", "p50_ms", 0.1, r)]
        paired = self.table(self.run_report(rows), "| clusterconnect / haproxy-2hop |")
        self.assertIn("| small GET p50 ms (1 conn) | 0.50 | 0.50 – 0.50 (94 %) | 5 | too few rounds for 95 % |", paired)

    def test_untagged_figures_still_give_medians(self):
        out = self.run_report([("direct", "p50_ms", 0.1), ("clusterconnect", "p50_ms", 0.3),
                               ("clusterconnect", "kb_per_conn", 20), ("haproxy-2hop", "kb_per_conn", 25)])
        self.assertIn("| small GET p50 ms (1 conn) | 0.100 |", out)
        self.assertIn("one hold, no interval", out)


if __name__ == "__main__":
    unittest.main()
