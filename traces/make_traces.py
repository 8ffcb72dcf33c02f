"""Regenerate the shipped synthetic traces: `python traces/make_traces.py`.

Same code + same seeds give byte-identical files (the generator only uses
numpy's PCG64), so a diff after running this means the generator changed.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from cxlsim.traces import read_mooncake, reuse_ratio, synthesize, write_mooncake  # noqa: E402

TRACES = {"synth_small.jsonl": (300, 1), "synth_medium.jsonl": (2000, 2)}  # name: (requests, seed)


def main() -> None:
    for name, (n, seed) in TRACES.items():
        path = HERE / name
        write_mooncake(synthesize(n, seed), path)
        back = list(read_mooncake(path))  # re-read: proves the file is valid Mooncake format
        blocks = sum(len(r.block_keys) for r in back)
        print(f"{name}: {len(back)} requests, seed {seed}, {blocks} block accesses, "
              f"reuse ratio {reuse_ratio(back):.3f}, last arrival {back[-1].arrival_ms / 1000:.0f} s")


if __name__ == "__main__":
    main()
