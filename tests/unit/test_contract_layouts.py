"""clusterjobs reads clusterreg's `protocol` rows through its own copy of the row layout (the two
need different table decorators, so they cannot share one class). Payout reads the pay rate and the
funder from that row: if the copies ever differ, payouts decode garbage. Keep them identical."""

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "contracts" / "src"


def fields(path: Path, cls: str) -> list[tuple[str, str]]:
    text = path.read_text()
    body = re.search(rf"class {cls} extends Table \{{\s*constructor\((.*?)\)\s*\{{", text, re.S)
    assert body, f"class {cls} not found in {path}"
    return re.findall(r"public (\w+): ([\w<>]+)", body.group(1))


def test_clusterjobs_reads_exactly_the_layout_clusterreg_writes():
    written = fields(SRC / "clusterreg" / "clusterreg.tables.ts", "Protocol")
    read = fields(SRC / "clusterjobs" / "clusterjobs.tables.ts", "RegistryProtocol")
    assert len(written) >= 9
    assert read == written


def test_clusterjobs_reads_exactly_the_acct_layout_clusterreg_writes():
    """delworker/deldisptch read clusterreg's `acct` rows to refuse deregistering someone still owed."""
    written = fields(SRC / "clusterreg" / "clusterreg.tables.ts", "Acct")
    read = fields(SRC / "clusterjobs" / "clusterjobs.tables.ts", "RegistryAcct")
    assert len(written) == 4
    assert read == written
