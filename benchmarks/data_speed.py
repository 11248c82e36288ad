"""Speed of the data preparation the unit tests used to time (timings on shared cores made those tests flaky):

    python benchmarks/data_speed.py            # encode 4 Mbp of DNA text; build 200 spoken-digit clips

The old test limits are printed beside each time for reference (1 s for the 4 Mbp encoding, which a per-base
Python loop would take seconds for; 60 s for the 200 clips). The machine's load average is recorded, since a
busy machine slows both. The result goes to benchmarks/results/data_speed_<device>.json (and is printed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audio.digits import make_digits  # noqa: E402
from genomics.tokenizer import encode  # noqa: E402
from ssm_core.utils.device import describe_device  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def best_of(repeats: int, work) -> float:
    """The shortest of ``repeats`` wall times of ``work()`` in seconds (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips-per-class", type=int, default=20, help="spoken digits per class (default: 20)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the JSON goes (default %(default)s)")
    args = parser.parse_args(argv)

    text = "ACGTacgtNN" * 400_000
    load_before = os.getloadavg()[0]
    encode_s = best_of(3, lambda: encode(text))
    with tempfile.TemporaryDirectory() as tmp:
        digits_s = best_of(1, lambda: make_digits(Path(tmp) / "digits", per_class=args.clips_per_class, seed=0,
                                                  progress=False))
    device = describe_device("cpu")
    result = {"device": device, "date": date.today().isoformat(), "load_average_at_start": load_before,
              "load_average_at_end": os.getloadavg()[0],
              "encode_4mbp_s": round(encode_s, 4), "digits_clips": 10 * args.clips_per_class,
              "digits_s": round(digits_s, 2), "old_test_limits_s": {"encode_4mbp": 1.0, "digits_200_clips": 60.0}}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"data_speed_{device.replace(' ', '_').replace(',', '')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
