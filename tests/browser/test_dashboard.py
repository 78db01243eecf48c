"""The web dashboard in a real headless chromium (Debian's chromium + chromium-driver, selenium).

A real operator (local worker slots) runs a real job on the session's ZooKeeper and chain node;
the page must show what `boidctl get` and `boidctl report` say, follow the job live without a
reload, and say what to do when there is no cluster or ZooKeeper goes away. Screenshots of the
main views at desktop and phone widths are saved for review (path printed; .state/ is ignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures.netproxy import Proxy
from fixtures.operator import cond, eventually, protocol_obj
from fixtures.zookeeper import make_chroot
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from boidcluster.adapters.local.zookeeper import LOOPBACK
from boidcluster.adapters.store import Store
from boidcluster.cli.cluster import start_operator
from boidcluster.cli.dashboard import start_dashboard
from boidcluster.cli.main import cli
from boidcluster.cli.wiring import OperatorOptions, close_world
from boidcluster.model.resources import Contributor, Job, Protocol

REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("BOID_SCREENSHOTS") or REPO / ".state" / "screenshots")
DESKTOP, PHONE = (1280, 900), (390, 844)
VIEWS = ("overview", "jobs", "contributors", "money", "health")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("chromium and chromedriver are needed (`make setup` installs Debian's chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
                 f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


# Switches the view (the app renders in its own hashchange listener, registered first) and measures
# in the same task: the page's width and the elements that reach past the screen.
SWITCH_AND_MEASURE = """
const [view, width, done] = arguments;
window.addEventListener("hashchange", () => done({
  page: document.documentElement.scrollWidth,
  past: [...document.querySelectorAll("body *")].filter(e => e.getBoundingClientRect().right > width)
    .slice(0, 5).map(e => `${e.tagName.toLowerCase()}.${e.className} ${Math.round(e.getBoundingClientRect().width)}px`)}),
  {once: true});
location.hash = "#" + view;
"""
# The visible charts: each one's drawn width and the width of the box it is drawn in (equal once
# Chart.js has resized it to its box).
CHART_WIDTHS = """return Object.fromEntries([...document.querySelectorAll("section:not([hidden]) canvas")]
  .map(c => [c.getAttribute("aria-label"), [c.getBoundingClientRect().width, c.parentElement.clientWidth]]))"""


def text(driver, css: str) -> str:
    """The rendered text of the first match, read in one step (the page re-renders as data arrives)."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText.trim() : ''", css)


def boidctl(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.output


def shoot(driver, name: str, size: tuple[int, int]) -> Path:
    """A full-page screenshot at `size` (device metrics emulated, so phone width is exact)."""
    w, h = size
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": w < 600})
    time.sleep(0.3)  # let the charts resize to the new width (not an assertion: only the picture)
    full = driver.execute_script("return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": w, "height": max(h, min(int(full), 4000)), "deviceScaleFactor": 1,
                            "mobile": w < 600})
    time.sleep(0.2)
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}-{'phone' if w < 600 else 'desktop'}.png"
    driver.save_screenshot(str(path))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path


def contributor(name: str, account: str, researcher: str) -> Contributor:
    return Contributor.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Contributor", "metadata": {"name": name},
        "spec": {"account": account, "role": "worker", "researchers": [researcher]}})


def gated_job(name: str, protocol: str, gate: Path, units: int) -> Job:
    """Each unit waits for the file gate/<unit index>: the test decides when progress happens."""
    script = (f'while [ ! -e "{gate}/$BOID_UNIT_INDEX" ]; do sleep 0.05; done; '
              'echo "unit $BOID_UNIT_INDEX" > "$BOID_OUTPUT_DIR/out.txt"')
    return Job.model_validate({
        "apiVersion": "cluster.boid.com/v1alpha1", "kind": "Job", "metadata": {"name": name},
        "spec": {"protocol": protocol, "image": "local", "command": ["/bin/sh", "-c", script],
                 "workUnits": {"count": units}, "parallelism": 2, "retries": 0,
                 "output": {"path": f"results/{name}", "reduce": "concat"}}})


@pytest.fixture
def cluster(zk_hosts, chain_world, actors, tmp_path):
    """An operator with two local worker slots, and the dashboard it serves (`operator run --dashboard-port`)."""
    keys = tmp_path / "operator-keys.json"
    chain_world.operator_keys.write(keys)
    store = Store(zk_hosts)
    opts = OperatorOptions(zk=zk_hosts, storage=f"file://{tmp_path / 'storage'}", chain_url=chain_world.url,
                           keys_file=str(keys), backend="local", slots=list(actors.workers), workers=2,
                           runtime="host")  # the units wait for gate files the test touches on this host
    op, world = start_operator(opts, store, health_port=None)
    dash = start_dashboard(zk_hosts, port=0, store=store, chain_url=chain_world.url,
                           metrics_registry=op.metrics.registry, refresh=0.5)
    try:
        yield store, op, dash
    finally:
        dash.stop()
        op.stop()
        close_world(world)
        store.close()


@pytest.mark.usefixtures("contracts_deployed")
def test_page_follows_a_job_live_and_agrees_with_get_and_report(browser, cluster, actors, chain_world, zk_hosts,
                                                                   tmp_path):
    store, op, dash = cluster
    store.create(protocol_obj("dash", actors, fund="100.0000 BOID", worker_rate="3600.0000 BOID"))
    chain_world.fund_protocol(store.get(Protocol, "dash"), "100.0000 BOID")  # `boidctl fund`, the owner's key
    op.enqueue("Protocol", "dash")
    for i, w in enumerate(actors.workers):
        store.create(contributor(f"w{i}", w, actors.researcher))
    eventually(lambda: cond(store.get(Protocol, "dash"), "Ready") == "True", timeout=30)
    for i in range(len(actors.workers)):
        eventually(lambda i=i: cond(store.get(Contributor, f"w{i}"), "Registered") == "True", timeout=30)
    gate = tmp_path / "gate"
    gate.mkdir()
    store.create(gated_job("sweep", "dash", gate, units=4))

    browser.get(dash.url + "#jobs")
    card = '[data-testid="job-sweep"]'
    eventually(lambda: text(browser, f"{card} [data-field=progress]") == "0/4 (0%)", timeout=20)
    page_id = browser.execute_script("return window.boidPageId")
    seen = browser.execute_script("return window.boidSnapshots")

    # two units may finish: the same page (no reload) shows it, and says what `boidctl get` says
    (gate / "0").touch()
    (gate / "1").touch()
    eventually(lambda: text(browser, f"{card} [data-field=progress]") == "2/4 (50%)", timeout=30)
    got = json.loads(boidctl("get", "job", "sweep", "-o", "json", "--zk", zk_hosts))
    assert got["status"]["progress"] == "2/4 (50%)"
    assert browser.execute_script("return window.boidPageId") == page_id  # not reloaded
    assert browser.execute_script("return window.boidSnapshots") > seen   # pushed by the server

    (gate / "2").touch()
    (gate / "3").touch()
    eventually(lambda: text(browser, f"{card} [data-field=phase]") == "Succeeded", timeout=30)
    got = json.loads(boidctl("get", "job", "sweep", "-o", "json", "--zk", zk_hosts))
    table = boidctl("get", "jobs", "--zk", zk_hosts)
    eventually(lambda: text(browser, f"{card} [data-field=progress]") == got["status"]["progress"] == "4/4 (100%)")
    units = text(browser, f"{card} [data-field=units]")
    assert units == "4/4 units" and units in table  # the same count as the terminal progress bar
    assert text(browser, f"{card} [data-field=output]") == got["status"]["output"]
    rate = browser.execute_script("return window.boidState.jobs.find(j => j.name === 'sweep').rate")
    # units/s over time, plotted on the page, adds up to the units validated (0.1: rates are rounded)
    assert abs(sum(r * (t - prev) for (prev, _), (t, r) in zip(rate, rate[1:])) - 4) < 0.1, rate
    assert browser.execute_script("return window.boidPageId") == page_id

    # a job that fails says which units and why, as `boidctl describe` does
    broken = gated_job("broken", "dash", gate, units=1)
    broken.spec.command = ["/bin/sh", "-c", "echo 'input missing' >&2; exit 3"]
    store.create(broken)
    bad = '[data-testid="job-broken"]'
    eventually(lambda: text(browser, f"{bad} [data-field=phase]") == "Failed", timeout=30)
    got = json.loads(boidctl("get", "job", "broken", "-o", "json", "--zk", zk_hosts))
    failed = next(c for c in got["status"]["conditions"] if c["type"] == "Failed")
    problems = text(browser, f"{bad} [data-field=problems]")
    assert got["status"]["failedUnits"] and all(u in problems for u in got["status"]["failedUnits"])
    assert f"Failed: {failed['reason']} — {failed['message']}" in problems

    # payouts: once the units are on chain the protocol pays; the page shows report's and get's numbers
    op.enqueue("Protocol", "dash")
    paid = eventually(lambda: (p := store.get(Protocol, "dash")).status and len(p.status.paid) == 2
                      and p.status.paid, timeout=30)
    report = boidctl("--zk", zk_hosts, "report", "dash", "--chain-url", chain_world.url)
    asset = r"(-?\d+\.\d+ [A-Z]+)"
    # CONTRIBUTOR ROLE ZOOKEEPER-s CHAIN-TOTAL-s NOT-YET-ON-CHAIN-s OWED PAID AGREE
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        rf"^([a-z1-5.]+)\s+worker\s+[\d.]+\s+([\d.]+)\s+[\d.]+\s+{asset}\s+{asset}\s+yes$", report, re.M)}
    books = re.search(rf"^escrow: deposited {asset} = paid {asset} \+ owed {asset} \+ withdrawn {asset} "
                      rf"\+ free {asset}$", report, re.M)
    assert set(rows) == set(actors.workers) and books and "The escrow's books balance exactly." in report, report
    got = json.loads(boidctl("get", "protocol", "dash", "-o", "json", "--zk", zk_hosts))
    assert {k: str(v) for k, v in paid.items()} == got["status"]["paid"] == {w: rows[w][2] for w in actors.workers}
    assert books.group(1) == "100.0000 BOID" and books.group(2) == got["status"]["paidTotal"] != "0.0000 BOID"

    browser.get(dash.url + "#contributors")  # (navigation between views; the live check is above)
    for w in actors.workers:
        row = f'[data-testid="money-dash-{w}"]'
        eventually(lambda row=row, w=w: (text(browser, f"{row} [data-field=time]"),
                                         text(browser, f"{row} [data-field=owed]"),
                                         text(browser, f"{row} [data-field=paid]")) == rows[w], timeout=15)
    browser.get(dash.url + "#money")
    proto = '[data-testid="protocol-dash"]'
    eventually(lambda: tuple(text(browser, f"{proto} [data-field={f}]")
                             for f in ("deposited", "paidTotal", "owed", "withdrawn", "free")) == books.groups(),
               timeout=15)
    assert text(browser, f"{proto} [data-field=balance]") == got["status"]["fundBalance"]
    kept = re.search(rf"^of the free escrow: reserved for running jobs {asset}, withdrawable {asset}$", report, re.M)
    assert kept, report  # what the owner may take back: as `report` computes it from the chain's row
    assert (text(browser, f"{proto} [data-field=reserved]"),
            text(browser, f"{proto} [data-field=withdrawable]")) == kept.groups()
    assert "exactly" in text(browser, f"{proto} [data-field=books]")
    for w in actors.workers:
        assert tuple(text(browser, f'[data-testid="paid-dash-{w}"] [data-field={f}]')
                     for f in ("time", "owed", "paid")) == rows[w]

    browser.get(dash.url + "#health")
    eventually(lambda: text(browser, '[data-testid="leader-full"]') == op.identity, timeout=15)
    assert text(browser, '[data-testid="zk-state"]') == "connected"
    assert browser.find_elements(By.CSS_SELECTOR, '[data-testid="latency-Job"]')

    shots = []
    for view in VIEWS:
        browser.get(f"{dash.url}#{view}")
        eventually(lambda: text(browser, '[data-testid="connection"]') == "live", timeout=10)
        for size in (DESKTOP, PHONE):
            shots.append(shoot(browser, view, size))
    print(f"\nscreenshots: {SHOTS}")
    assert all(p.stat().st_size > 5000 for p in shots)
    # phone width: nothing wider than the screen (no sideways scrolling of the page itself).
    # First the hazard, made certain: every view's charts drawn at the desktop's width, then hidden
    # with their view (Chart.js leaves a hidden chart's size as it was)
    desktop = {}
    for view in VIEWS:
        browser.get(f"{dash.url}#{view}")
        eventually(lambda: all(abs(w - box) < 1 for w, box in browser.execute_script(CHART_WIDTHS).values()), timeout=10)
        desktop.update({k: w for k, (w, _) in browser.execute_script(CHART_WIDTHS).items()})
    assert {"payouts", "health", "rate-sweep"} <= desktop.keys(), desktop
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 1, "mobile": True})
    try:
        for view in VIEWS:
            # measured in the task that shows the view, before any animation frame: a chart drawn
            # for the desktop and kept while its view was hidden must not widen the page even for
            # the frames before Chart.js resizes it (a slow phone shows those frames)
            assert browser.execute_script("return location.hash") != f"#{view}"
            wide = browser.execute_async_script(SWITCH_AND_MEASURE, view, PHONE[0])
            assert wide["page"] <= PHONE[0], (view, wide)
            assert text(browser, '[data-testid="connection"]') == "live"
        # and each chart is then drawn to fit the phone (narrower than it was), not only clipped
        for view in VIEWS:
            browser.get(f"{dash.url}#{view}")
            eventually(lambda: all(abs(w - box) < 1 for w, box in browser.execute_script(CHART_WIDTHS).values()), timeout=10)
            for name, (w, _) in browser.execute_script(CHART_WIDTHS).items():
                assert w < desktop[name] and w <= PHONE[0], (view, name, w, desktop[name])
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_no_cluster_then_empty_cluster_then_zookeeper_down(browser, zookeeper):
    """Each state says what to do: no ZooKeeper at all, a cluster without jobs, ZooKeeper lost."""
    chroot = make_chroot(zookeeper.hosts)[len(zookeeper.hosts):]
    proxy = Proxy(zookeeper.port)
    proxy.cut()  # nothing answers yet: as before `boidctl up`
    dash = start_dashboard(f"{LOOPBACK}:{proxy.port}{chroot}", port=0, refresh=0.5, timeout=1.0)
    try:
        browser.get(dash.url)
        eventually(lambda: "boidctl up" in text(browser, '[data-testid="banner"]'), timeout=20)
        assert "cannot reach ZooKeeper" in text(browser, '[data-testid="banner"]')
        assert text(browser, '[data-testid="connection"]') == "no cluster"
        shoot(browser, "no-cluster", DESKTOP)

        proxy.resume()  # the cluster comes up: the same page follows, and says how to start
        eventually(lambda: text(browser, '[data-testid="connection"]') == "live", timeout=30)
        assert not browser.find_element(By.CSS_SELECTOR, '[data-testid="banner"]').is_displayed()
        assert "boidctl apply -f manifests/examples/job.yaml" in text(browser, '[data-testid="view-overview"]')
        browser.get(dash.url + "#money")
        eventually(lambda: "No protocols yet" in text(browser, '[data-testid="view-money"]'))
        shoot(browser, "empty", PHONE)

        proxy.cut()  # ZooKeeper goes away under a running page
        eventually(lambda: text(browser, '[data-testid="connection"]') == "ZooKeeper down", timeout=30)
        assert "last state seen" in text(browser, '[data-testid="banner"]')
        proxy.resume()
        eventually(lambda: text(browser, '[data-testid="connection"]') == "live", timeout=30)
    finally:
        dash.stop()
        proxy.close()
