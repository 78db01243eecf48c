"""LocalZooKeeper: a real server on loopback that starts, answers imok, restarts with its data,
and stops by PID; missing java or jars give a `make setup` hint."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from boidcluster.adapters.local.zookeeper import LocalZooKeeper, LocalZooKeeperError, four_letter_word


def test_session_server_is_healthy(zookeeper: LocalZooKeeper) -> None:
    st = zookeeper.status()
    assert st.running and st.healthy and st.hosts == f"127.0.0.1:{zookeeper.port}"
    assert four_letter_word(zookeeper.port, "ruok") == "imok"


def test_restart_keeps_port_and_data_then_stop_ends_the_process(tmp_path: Path) -> None:
    zk = LocalZooKeeper(tmp_path / "zk", fsync=False, die_with_parent=True)
    with zk:
        client = KazooClient(hosts=zk.hosts)
        client.start(timeout=10)
        client.create("/kept", b"1")
        client.stop()
        client.close()
        port, pid = zk.port, zk.pid
        zk.restart()
        assert zk.port == port and zk.pid != pid and zk.status().healthy
        client = KazooClient(hosts=zk.hosts)
        client.start(timeout=10)
        assert client.get("/kept")[0] == b"1"
        client.stop()
        client.close()
        pid = zk.pid
        zk.stop()
        st = zk.status()
        assert not st.running and not st.healthy
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert (tmp_path / "zk" / "zoo.cfg").exists()  # a given state_dir is never removed


def test_missing_java_or_jar_says_run_make_setup(tmp_path: Path) -> None:
    with pytest.raises(LocalZooKeeperError, match="java not found.*make setup"):
        LocalZooKeeper(tmp_path, java="no-such-java").start()
    with pytest.raises(LocalZooKeeperError, match="jars missing.*make setup"):
        LocalZooKeeper(tmp_path, classpath=(tmp_path / "zookeeper.jar",)).start()


def test_port_in_use_is_refused(zookeeper: LocalZooKeeper, tmp_path: Path) -> None:
    with pytest.raises(LocalZooKeeperError, match="already served"):
        LocalZooKeeper(tmp_path, port=zookeeper.port).start()


def test_a_second_server_on_the_same_data_is_refused_until_the_first_dies(tmp_path: Path) -> None:
    """The running server holds its data dir's lock; kill -9 releases it, and a restart on the same
    port and data gets the data back."""
    zk = LocalZooKeeper(tmp_path / "zk", fsync=False, die_with_parent=True).start()
    try:
        with pytest.raises(LocalZooKeeperError, match=f"another ZooKeeper \\(pid {zk.pid}\\) already serves"):
            LocalZooKeeper(tmp_path / "zk", fsync=False).start()  # even on another port
        client = KazooClient(hosts=zk.hosts)
        client.start(timeout=10)
        client.create("/kept", b"1")
        client.stop()
        client.close()
        os.kill(zk.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while zk.exit_code() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert zk.exit_code() == -signal.SIGKILL
        assert zk.start().status().healthy  # the same object: same port and data
        client = KazooClient(hosts=zk.hosts)
        client.start(timeout=10)
        assert client.get("/kept")[0] == b"1"
        client.stop()
        client.close()
    finally:
        zk.stop()
