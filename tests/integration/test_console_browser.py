"""`keyferry console` in a real browser (Debian's chromium and chromium-driver, headless,
driven by Selenium with the driver's path given: Selenium never looks for one on the
network) against a broker on the bed (issue 22).

One browser for the module; the broker is the scene's, with a short rotation grace so an
old credential dies within the test. Each page loads with real data; a rotation by
selector started in the console completes and the old database logins are refused; a
grant approved in the console lets its requester's credential log in; an operator without
a permit sees the policy's refusal. No page carries a credential value. Screenshots land in
build/console/ (docs/console/ keeps copies of the main ones).

The browser is driven from a thread (asyncio.to_thread): the broker serves on the test's
event loop, the console in its own process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import duration_pb2
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from broker.api.v1 import access_pb2, access_pb2_grpc
from broker.identity.admin_pki import AdminCa
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.conftest import REQUIRED
from tests.scene.admin_helpers import PLATFORM, SECURITY
from tests.scene.broker import Broker, issue, log_in
from tests.scene.console import Console, running_console
from tests.scene.leases import works
from tests.scene.polling import until
from tests.scene.workloads import mint

pytestmark = pytest.mark.bed
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = Path(__file__).parents[2] / "build" / "console"
DEVELOPER = "dana-developer"
WAIT = 60.0  # bound of waiting for a page or a run; generous, never asserted


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = "chromium and chromium-driver are not installed (tests/run setup, as root)"
        if REQUIRED:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1360,1000", "--disable-gpu"):  # fmt: skip
        options.add_argument(argument)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never download anything
        service = Service(executable_path=str(CHROMEDRIVER))
        driver = webdriver.Chrome(options=options, service=service)
        driver.set_page_load_timeout(WAIT)
        SHOTS.mkdir(parents=True, exist_ok=True)
        yield driver
        driver.quit()


# So that a security operator can ask for a grant (and then try to approve it themselves),
# and sees the clusters on the overview (reading the registry is Cedar's `register`).
SELF_REQUEST = """
@id("security-requests-access")
permit (principal in Group::"security", action == Action::"request_access", resource is Role);

@id("security-reads-clusters")
permit (principal in Group::"security", action == Action::"register", resource is Cluster);
"""


@pytest.fixture
def broker_config(broker_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    policy = tmp_path / "self-request.cedar"
    policy.write_text(SELF_REQUEST)
    broker_config["policies"].append(str(policy))
    broker_config["rotation"] = {"grace": "2s"}
    broker_config["revocation"] = {"interval": "1s"}
    return broker_config


class Page:
    """The browser on one console, from a thread: open pages, click, wait, shoot."""

    def __init__(self, driver: webdriver.Chrome, console: Console) -> None:
        self.driver = driver
        self.console = console
        self.sources: list[str] = []

    def open(self, path: str) -> None:
        self.driver.get(f"{self.console.base}{path}")
        self._keep()

    def text(self, css: str) -> str:
        return str(self.driver.find_element(By.CSS_SELECTOR, css).text)

    def all_text(self, css: str) -> list[str]:
        return [str(e.text) for e in self.driver.find_elements(By.CSS_SELECTOR, css)]

    def click(self, css: str) -> None:
        """Click a button or link; every one in the console loads a new page."""
        before = self.driver.find_element(By.TAG_NAME, "html")
        self.driver.find_element(By.CSS_SELECTOR, css).click()
        WebDriverWait(self.driver, WAIT).until(expected_conditions.staleness_of(before))
        self._keep()

    def wait_for(self, css: str) -> None:
        try:
            WebDriverWait(self.driver, WAIT).until(
                expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
            )
        except TimeoutException:
            self.shot("failed")
            body = self.driver.find_element(By.TAG_NAME, "body").text
            raise AssertionError(f"no {css} on {self.driver.current_url}: {body}") from None
        self._keep()

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(SHOTS / f"{name}.png"))

    def _keep(self) -> None:
        self.sources.append(str(self.driver.page_source))


def sign_in(driver: webdriver.Chrome, console: Console) -> Page:
    driver.delete_all_cookies()
    page = Page(driver, console)
    page.driver.get(console.url)  # the token is exchanged for the session cookie
    page.wait_for("#operator")
    return page


async def test_the_console_shows_the_fleet_rotates_by_selector_and_approves_a_grant(
    broker: Broker,
    browser: webdriver.Chrome,
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    tokens = [mint(kube_clusters[name]) for name in ("a", "a", "b")]
    issued = [await issue(broker, token) for token in tokens]
    in_a = issued[:2]
    secrets = [value for answer in issued for value in answer.credential.values.values()]
    assert await broker.server.runtime.checkpoint()

    with running_console(broker.context_file(tmp_path, SECURITY)) as console:

        def overview() -> Page:
            page = sign_in(browser, console)
            assert page.text("#operator") == SECURITY
            assert {row.split()[0] for row in page.all_text("tr.cluster")} == {"a", "b", "c"}
            # Each cluster's API server, contact, keys and pod watch, as the broker has them.
            for row in browser.find_elements(By.CSS_SELECTOR, "tr.cluster"):
                cells = [str(cell.text) for cell in row.find_elements(By.TAG_NAME, "td")]
                assert cells[1].startswith("https://"), cells
                assert "-" not in (cells[3], cells[5]), cells  # last contact, JWKS age
                watch = row.find_element(By.CSS_SELECTOR, "td.watch")
                assert watch.get_attribute("data-state") == "watching", cells
                assert watch.text.startswith("watching for "), cells
            assert page.text("#live-total") == "3"
            assert page.text("#revoking-count") == "0"
            assert "issued: 3" in page.text("#activity")
            page.shot("overview")
            return page

        page = await asyncio.to_thread(overview)

        def rotate_cluster_a() -> str:
            page.open("/leases?cluster=a&namespace=orders")
            assert len(page.all_text("tr.lease")) == 2
            page.shot("leases")
            page.click("#rotate-plan")
            page.wait_for("#planned-count")
            assert page.text("#planned-count") == "2"
            page.shot("rotate-dry-run")
            page.click("#confirm")
            page.wait_for("#job-state[data-finished='yes']")
            page.shot("rotate-progress")
            return page.text("#job-summary")

        summary = await asyncio.to_thread(rotate_cluster_a)
        assert "done 2, failed 0" in summary

        async def old_logins_refused() -> bool:
            alive = await asyncio.gather(
                *(asyncio.to_thread(works, postgres, a.credential.values) for a in in_a)
            )
            return not any(alive)

        await until(old_logins_refused, "the rotated-away logins refused", within=WAIT)
        log_in(postgres, issued[2].credential.values)  # cluster b's lease was not selected

        grant = await request_grant(broker, DEVELOPER)
        own = await request_grant(broker, SECURITY)

        def approve() -> list[str]:
            page.open("/grants")
            assert page.text(f"#grant-{grant} .state") == "pending"
            page.click(f"#grant-{own} button.approve")
            page.wait_for(".flash")
            refused_own = page.text(".flash")
            page.click(f"#grant-{grant} button.approve")
            page.wait_for(".flash")
            page.shot("grants")
            return [refused_own, page.text(".flash"), page.text(f"#grant-{grant} .state")]

        self_approval, flash, state = await asyncio.to_thread(approve)
        assert self_approval.startswith("approve refused (SELF_APPROVAL)")
        assert flash == f"grant {grant} is approved"
        assert state == "approved"
        credential = await issue_for_grant(broker, grant)
        log_in(postgres, credential)
        secrets += list(credential.values())

        def audit() -> list[str]:
            page.open("/audit?action=rotate")
            assert page.text("#verify-result").startswith("Verified:")
            page.shot("audit")
            return page.all_text("tr.record td.action")

        actions = await asyncio.to_thread(audit)
        assert actions == ["rotate", "rotate"]
        sources = page.sources

    with running_console(broker.context_file(tmp_path, PLATFORM)) as console:

        def refused() -> str:
            page = sign_in(browser, console)
            assert "no policy permits operator" in page.text("#activity")
            page.open("/leases?cluster=b")
            page.click("#rotate-plan")
            page.wait_for("#refused")
            page.shot("refused")
            sources.extend(page.sources)
            return page.text("#refused")

        refusal = await asyncio.to_thread(refused)
    assert f"no policy permits operator '{PLATFORM}' to rotate" in refusal
    assert "nothing was changed" in refusal

    leaks = [secret[:3] for secret in secrets for source in sources if secret in source]
    assert leaks == [], "a credential value reached the browser"


async def request_grant(broker: Broker, operator: str) -> str:
    """`operator`'s request for orders-db-ro, over the admin listener (a developer's
    certificate is issued by the broker's admin CA first)."""
    ca_folder = broker.settings.admin.client_ca
    assert ca_folder is not None
    if operator == DEVELOPER:
        AdminCa.load(ca_folder.parent).issue_operator(DEVELOPER, ["developers"])
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(minutes=30))
    async with broker.admin_channel(operator) as channel:
        stub: Any = access_pb2_grpc.AccessServiceStub(channel)
        reply = await stub.RequestGrant(
            access_pb2.RequestGrantRequest(role="orders-db-ro", duration=duration, reason="INC-22")
        )
    return str(reply.grant.id)


async def issue_for_grant(broker: Broker, grant: str) -> dict[str, str]:
    async with broker.admin_channel(DEVELOPER) as channel:
        stub: Any = access_pb2_grpc.AccessServiceStub(channel)
        reply = await stub.IssueForGrant(access_pb2.IssueForGrantRequest(grant_id=grant))
    return dict(reply.credential.values)
