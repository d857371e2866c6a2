// Loads the dashboard in Debian's headless Chromium, sends webhook events, and checks that a
// process appears and that its status changes live, without a reload; that its history lists
// its events; that a status card filters the list; that a disconnect shows a banner and the
// list resumes after it; and that nothing overflows at 1280 and 390 px (screenshots of both).
// With caller authentication on, a page without a token says so, and one opened with
// #token=... works. Env: DASHBOARD_URL, WEBHOOK_URL, SCREENSHOT_DIR, TOKEN.
import { chromium } from "playwright-core";

import { existsSync, writeFileSync } from "node:fs";

const { DASHBOARD_URL, WEBHOOK_URL, SCREENSHOT_DIR, TOKEN, CONTROL_DIR } = process.env;

// Asks browser-test.sh to stop or start the service, and waits until it did.
async function service(action) {
  const file = `${CONTROL_DIR}/${action}`;
  writeFileSync(file, "");
  while (existsSync(file)) await new Promise((r) => setTimeout(r, 100));
}
const processId = String(7300000000000000000n + BigInt(Date.now()));

function event(id, status, createTime, type = "corehr.process.status.update_v2", body = {}, process = processId) {
  return {
    schema: "2.0",
    header: { event_id: id, event_type: type, create_time: String(createTime), tenant_key: "t", app_id: "cli_a1b2c3d4e5f60718" },
    event: { process_id: process, status, biz_type: "leave", flow_definition_id: "people_1_2", properties: 1, ...body },
  };
}

// Nothing wider than the window: no horizontal scroll bar on the page itself.
async function noOverflow(page, width) {
  const [scroll, inner, widest] = await page.evaluate(() => {
    const over = [...document.querySelectorAll("body *")]
      .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5)
      .map((e) => `${e.tagName.toLowerCase()}${e.id ? "#" + e.id : ""}.${e.className}`);
    return [document.documentElement.scrollWidth, window.innerWidth, over.slice(0, 5).join(", ")];
  });
  if (scroll > inner) throw new Error(`at ${width} px the page is ${scroll} px wide (${widest})`);
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
  console.log(`dashboard: process ${processId} appeared and turned COMPLETED live`);

  // Its history: every event, newest first, with type and source (ListProcessChanges).
  const history = page.locator("#detail table").last();
  await history.locator("tbody tr").nth(2).waitFor({ timeout: 15000 });
  const first = await history.locator("tbody tr").first().textContent();
  if (!/status\.update_v2/.test(first) || !/webhook/.test(first) || !/COMPLETED/.test(first)) {
    throw new Error(`history's newest row: ${first}`);
  }
  await history.locator("td", { hasText: "approver.updated_v2" }).waitFor();
  console.log("dashboard: the selected process's history lists its three events with type and source");

  // A status card filters the list; ALL clears it. The note says how many are shown.
  await page.locator('button.count[data-status="COMPLETED"]').click();
  if ((await page.locator("#filter-status").inputValue()) !== "COMPLETED") throw new Error("the card did not filter");
  if (await page.locator("#processes .s-IN_PROGRESS").count() > 0) throw new Error("the filtered list shows other statuses");
  await page.locator('button.count[data-status="COMPLETED"].active').waitFor();
  await page.locator("#shown", { hasText: " of " }).waitFor();
  await page.locator('button.count[data-status="ALL"]').click();
  console.log("dashboard: a status card filters the list");

  // A disconnect (the service stopped, then started again): a banner while it lasts; then the
  // list resumes from its revision with what happened since.
  await service("stop");
  await page.locator("#banner.shown").waitFor({ timeout: 30000 });
  await service("start");
  const later = String(BigInt(processId) + 1n);
  await post(event(`bt-${later}-1`, 1, 1719391070000, undefined, {}, later));
  await page.locator("#state.live").waitFor({ timeout: 30000 });
  await page.locator(`tr[data-process-id="${later}"]`).waitFor({ timeout: 15000 });
  if (await page.locator("#banner.shown").count() > 0) throw new Error("the banner stayed after the resume");
  if (navigations !== 1) throw new Error(`the page reloaded (${navigations} navigations)`);
  console.log("dashboard: a disconnect shows a banner; the list resumes with the change made meanwhile");

  for (const width of [1280, 390]) {
    await page.setViewportSize({ width, height: width > 800 ? 800 : 844 });
    await page.waitForTimeout(300);
    await noOverflow(page, width);
    await page.screenshot({ path: `${SCREENSHOT_DIR}/dashboard-${width}.png`, fullPage: width < 800 });
  }
  console.log(`dashboard: nothing overflows at 1280 and 390 px; screenshots in ${SCREENSHOT_DIR}`);
} catch (err) {
  failed = true;
  console.error(`dashboard test failed: ${err.stack ?? err}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
