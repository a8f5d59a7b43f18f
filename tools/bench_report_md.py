"""Render `edgecnn bench --json` files as the markdown tables of docs/benchmarks.md.

    .venv/bin/python tools/bench_report_md.py docs/benchmarks/runtime_*.json
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    for path in sys.argv[1:]:
        data = json.load(open(path))
        m = data["machine"]
        print(f"\n`{path}`: {m['cpu']}, {m['usable_cpus']} CPUs ({', '.join(m['simd'])}), onnxruntime "
              f"{m['onnxruntime']}, {m['date']}\n")
        print("| variant | runner | batch | threads | p50 ms | p90 ms | p99 ms | mean ms | img/s | session s "
              "| peak MB |")
        print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for r in sorted(data["results"], key=lambda r: (r["threads"], r["batch"])):
            print(f"| {r['variant']} | {r['runner']} | {r['batch']} | {r['threads']} | {r['p50_ms']:.3f} | "
                  f"{r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {r['mean_ms']:.3f} | {r['throughput_ips']:,.0f} | "
                  f"{r['session_s']:.3f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
