"""messages.csv: writing, reading, and pairing a deployment's send and receive logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerlearn.results.messages import match_deployed, read_messages_csv, write_messages_csv


def test_round_trip(tmp_path: Path) -> None:
    rows = [(0, 1, "fragment", 3, 1000, 0.5, 0.75), (1, 0, "model", 4, 28, 1.0, 1.0000001)]
    write_messages_csv(tmp_path / "m.csv", rows)
    log = read_messages_csv(tmp_path / "m.csv")
    assert len(log) == 2
    assert log.transfer_s.tolist() == [0.25, 1.0000001 - 1.0]
    assert log.kind.tolist() == ["fragment", "model"]


def test_bad_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"not a messages\.csv"):
        read_messages_csv(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("src,dst,kind,iteration,bytes,sent_s,delivered_s\n1,2\n")
    with pytest.raises(ValueError, match=r"m\.csv:2: 2 fields"):
        read_messages_csv(tmp_path / "m.csv")


def test_match_pairs_by_order_per_pair() -> None:
    sent = {
        0: [
            (1, 0, "fragment", 1, 100, 0.1),
            (1, 1, "fragment", 1, 200, 0.1),
            (2, 0, "f", 2, 9, 0.3),
        ],
        1: [(0, 0, "fragment", 1, 100, 0.2)],
    }
    received = {
        1: [(0, 0, 1, 100, 0.4), (0, 1, 1, 200, 0.6)],
        0: [(1, 0, 1, 100, 0.5)],
        2: [(0, 0, 3, 9, 0.9)],  # iteration disagrees with the send: not paired
    }
    rows, unmatched = match_deployed(sent, received)
    assert rows == [
        (0, 1, "fragment", 1, 100, 0.1, 0.4),
        (1, 0, "fragment", 1, 100, 0.2, 0.5),
        (0, 1, "fragment", 1, 200, 0.1, 0.6),
    ]
    assert unmatched == 1
