// Loads the dashboard in Debian's headless Chromium, sends webhook events, and checks that a
// process appears and that its status changes live, without a reload. Saves a screenshot.
// With caller authentication on, a page without a token says so, and one opened with
// #token=... works. Env: DASHBOARD_URL, WEBHOOK_URL, SCREENSHOT, TOKEN.
import { chromium } from "playwright-core";

const { DASHBOARD_URL, WEBHOOK_URL, SCREENSHOT, TOKEN } = process.env;
const processId = String(7300000000000000000n + BigInt(Date.now()));

function event(id, status, createTime, type = "corehr.process.status.update_v2", body = {}) {
  return {
    schema: "2.0",
    header: { event_id: id, event_type: type, create_time: String(createTime), tenant_key: "t", app_id: "cli_a1b2c3d4e5f60718" },
    event: { process_id: processId, status, biz_type: "leave", flow_definition_id: "people_1_2", properties: 1, ...body },
  };
}

async function post(e) {
  const r = await fetch(WEBHOOK_URL, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(e) });
  if (r.status !== 200) throw new Error(`webhook answered ${r.status}: ${await r.text()}`);
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failed = false;
try {
  if (TOKEN) {
    const anonymous = await browser.newPage();
    await anonymous.goto(DASHBOARD_URL);
    await anonymous.locator("#state", { hasText: "unauthenticated" }).waitFor({ timeout: 15000 });
    await anonymous.close();
    console.log("dashboard: without a token the page says it is unauthenticated");
  }
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  let navigations = 0;
  // Full page loads only: dropping the #token fragment is a same-document navigation.
  page.on("load", () => { navigations += 1; });
  const loaded = await page.goto(TOKEN ? `${DASHBOARD_URL}#token=${TOKEN}` : DASHBOARD_URL);
  const headers = loaded.headers();
  const want = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
  };
  for (const [name, value] of Object.entries(want)) {
    if (headers[name] !== value) throw new Error(`${name}: ${headers[name]}, want ${value}`);
  }
  if (!/frame-ancestors 'none'/.test(headers["content-security-policy"] ?? "")) {
    throw new Error(`CSP without frame-ancestors 'none': ${headers["content-security-policy"]}`);
  }
  // And the browser enforces it: a page of another origin cannot show the dashboard in a frame.
  const framer = await browser.newPage();
  await framer.setContent(`<iframe id="f" src="${DASHBOARD_URL}"></iframe>`);
  await framer.waitForTimeout(1000);
  const framed = framer.frames().find((f) => f.url().startsWith(DASHBOARD_URL));
  const framedTitle = framed ? await framed.title().catch(() => "") : "";
  if (framedTitle) throw new Error(`the dashboard rendered inside another page's frame ("${framedTitle}")`);
  await framer.close();
  console.log("dashboard: frame-ancestors, X-Frame-Options, nosniff and no-referrer set; framing blocked");
  await page.locator("#state.live").waitFor({ timeout: 15000 });

  await post(event(`bt-${processId}-1`, 1, 1719391068000));
  await post(event(`bt-${processId}-2`, undefined, 1719391068100, "corehr.process.approver.updated_v2",
    { approver_id: "8100000000000000001", type: 1, status: 1, node_definition_id: "approval_1", node_id_str: "9100" }));
  const row = page.locator(`tr[data-process-id="${processId}"]`);
  await row.locator(".s-IN_PROGRESS").waitFor({ timeout: 15000 });
  // "Waiting for": the open task's assignee (its task id until the REST API names a person).
  await row.locator("td", { hasText: "8100000000000000001" }).waitFor({ timeout: 15000 });
  await row.click();
  await page.locator("#detail h2", { hasText: processId }).waitFor();

  await post(event(`bt-${processId}-3`, 9, 1719391069000));
  await row.locator(".s-COMPLETED").waitFor({ timeout: 15000 });
  if ((await row.locator("td").nth(3).textContent()) !== "") throw new Error("a completed process still waits for someone");
  if (navigations !== 1) throw new Error(`the page reloaded (${navigations} navigations)`);
  await page.screenshot({ path: SCREENSHOT });
  console.log(`dashboard: process ${processId} appeared and turned COMPLETED live; screenshot ${SCREENSHOT}`);
} catch (err) {
  failed = true;
  console.error(`dashboard test failed: ${err.stack ?? err}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
