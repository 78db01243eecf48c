"""Run records as JSON: what a unit can put into one (a file name that is not UTF-8, quoted in
its failure message) never makes a record unwritable or unreadable, and records written by the
json encoder before (surrogate escapes) still read back."""

from __future__ import annotations

import json

from boidcluster.reconcilers.jobs.records import Final, Summary, TaskResult, _dump, _load


def result(message: str) -> TaskResult:
    return TaskResult(unit="u000001", state="FAILED", contributor="alice", exit_code=None, us=10, hash=None,
                      message=message, failure=True, finished_us=1)


def test_a_message_quoting_a_non_utf8_file_name_is_written_and_read_back():
    name = b"out\xff.txt".decode("utf-8", "surrogateescape")   # as os.scandir names such a file
    rec = result(f"outputs may hold only regular files and directories: {name} is a fifo")
    back = _load(TaskResult, _dump(rec))
    assert back is not None and back.unit == "u000001" and back.failure
    assert back.message == "outputs may hold only regular files and directories: out?.txt is a fifo"
    final = Final(phase="Failed", reason="UnitFailed", message=rec.message, units=["u000001"], at_us=5)
    summary = Summary(final=final, start_us=1, total=1, validated=0, succeeded=0, contributors={},
                      slowest=[], disagreements=[], record="r.json")
    assert Summary.from_raw(summary.to_json()).final.message.endswith("out?.txt is a fifo")


def test_records_written_with_surrogate_escapes_by_the_json_encoder_still_load():
    old = json.dumps({"unit": "u000001", "state": "FAILED", "contributor": "alice", "exit_code": None, "us": 10,
                      "hash": None, "message": "bad name out\udcff.txt", "failure": True, "finished_us": 1}).encode()
    back = _load(TaskResult, old)
    assert back is not None and back.message == "bad name out\udcff.txt"


def test_plain_records_round_trip_exactly():
    rec = result("exit code 3")
    assert _load(TaskResult, _dump(rec)) == rec
