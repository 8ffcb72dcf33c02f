"""The policy tutorial's code runs as written and gives the numbers the tutorial quotes."""
import re
from pathlib import Path

from cxlsim.cachesim import simulate
from cxlsim.traces import trace_arrays

REPO = Path(__file__).resolve().parents[1]


def test_policy_tutorial_code_and_table(tmp_path, monkeypatch):
    text = (REPO / "docs" / "policies.md").read_text()
    code = re.search(r"```python\n(from collections import OrderedDict.*?)```", text, re.S).group(1)
    (tmp_path / "my_policies.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_policies

    arrays = trace_arrays(REPO / "traces" / "synth_medium.jsonl")
    rows = re.findall(r"^\| (\d+) \| ([\d,]+) \| ([\d,]+) \|", text, re.M)
    assert len(rows) == 4
    for capacity, lru_hits, protect_hits in rows:
        cap = int(capacity)
        assert simulate(arrays, "lru", cap).block_hits == int(lru_hits.replace(",", ""))
        mine = simulate(arrays, my_policies.ProtectPrefix(), cap)
        assert mine.block_hits == int(protect_hits.replace(",", ""))
