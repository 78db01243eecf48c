"""A `reduce: command` reducer is given every accepted unit directory, whatever the job's size.

A 100,000-unit job's directories (~9 MB of paths here) do not fit in one command line (Linux's
ARG_MAX, 2 MB with the environment): exec fails with E2BIG, and the job, after every unit ran,
failed in its last step. `output.unitDirs: file` hands them over in the file named by
$BOID_UNIT_DIRS instead; with arguments, such a job is refused, saying so.
"""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from boidcluster.adapters.storage import Storage
from boidcluster.reconcilers.jobs.amalgamate import OutputInvalid, publish, reducer_args_too_long

# writes what it was given: its arguments, and the listing file's lines
REDUCER = [sys.executable, "-c",
           "import os,sys,json;d=os.environ['BOID_OUTPUT_DIR'];"
           "ls=open(os.environ['BOID_UNIT_DIRS']).read().splitlines();"
           "json.dump({'args':sys.argv[1:],'listed':ls,'exist':all(os.path.isdir(x) for x in ls[:5])},"
           "open(os.path.join(d,'given.json'),'w'))"]


def units(storage: Storage, n: int, made: int = 5) -> list[tuple[str, str]]:
    """n units' accepted output directories (as the reconciler names them); the first `made` exist."""
    out = [(f"u{i:06d}", f"data/.runs/job-0123abcd/u{i:06d}.0") for i in range(n)]
    for _, d in out[:made]:
        storage.ensure_dir(d)
    return out


def given(storage: Storage) -> dict:
    import json
    return json.loads(storage.read_bytes("data/out/given.json"))


@pytest.fixture
def storage(tmp_path):
    with Storage(f"file://{tmp_path}/root") as s:
        yield s


def test_a_small_job_gets_its_directories_as_arguments_and_in_the_file(storage):
    us = units(storage, 3)
    publish(storage, "data/out", "command", REDUCER, us, {"units": []})
    got, want = given(storage), [storage.resolve(d) for _, d in us]
    assert got["args"] == want and got["listed"] == want and got["exist"]


def test_a_100000_unit_job_with_unit_dirs_file_gets_every_directory_in_order(storage):
    us = units(storage, 100_000)
    publish(storage, "data/out", "command", REDUCER, us, {"units": []}, unit_dirs="file")
    got = given(storage)
    assert got["args"] == [] and got["exist"]
    assert got["listed"] == [storage.resolve(d) for _, d in us]


def test_a_100000_unit_job_with_arguments_is_refused_naming_the_fix_not_e2big(storage):
    us = units(storage, 100_000)
    with pytest.raises(OutputInvalid, match=r"100000 unit directories as arguments, .* set output.unitDirs: file"):
        publish(storage, "data/out", "command", REDUCER, us, {"units": []})
    assert not storage.exists("data/out/given.json")


def test_the_limit_is_the_kernels_beside_the_environment():
    """What the check accepts, execve accepts; well past it, execve refuses (E2BIG): the check is
    the kernel's limit, arguments and environment together."""
    env = {f"V{i}": "x" * 100_000 for i in range(5)}   # 0.5 MB of environment
    dirs, fits = ["/d" * 50], None
    while reducer_args_too_long(len(dirs), dirs, env) is None:
        fits = list(dirs)
        dirs += dirs[:1000]
    assert fits and 10_000 < len(fits) < 20_000
    subprocess.run(["/bin/true", *fits[1:]], env=env, check=True)
    with pytest.raises(OSError) as e:
        subprocess.run(["/bin/true", *(fits * 2)], env=env, check=True)
    assert e.value.errno == errno.E2BIG
    assert reducer_args_too_long(1, ["/" + "x" * 200_000], env={}) is not None   # one over MAX_ARG_STRLEN
