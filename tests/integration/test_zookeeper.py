"""LocalZooKeeper: a real server on loopback that starts, answers imok, restarts with its data,
and stops by PID; missing java or jars give a `make setup` hint."""

from __future__ import annotations

import os
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
