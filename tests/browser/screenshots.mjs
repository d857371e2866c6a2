// The README's screenshots: the dashboard of a service fed by `simulate --seed 1`, at 1280 and
// 390 px, with a process in progress selected. Env: DASHBOARD_URL, OUT_DIR, PROCESS_ID.
import { chromium } from "playwright-core";

const { DASHBOARD_URL, OUT_DIR, PROCESS_ID } = process.env;
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
});
try {
  for (const width of [1280, 390]) {
    const page = await browser.newPage({ viewport: { width, height: width > 800 ? 900 : 844 } });
    await page.goto(DASHBOARD_URL);
    await page.locator("#state.live").waitFor({ timeout: 15000 });
    await page.locator(`tr[data-process-id="${PROCESS_ID}"]`).click();
    await page.locator("#detail table").last().locator("tbody tr").first().waitFor();
    await page.screenshot({ path: `${OUT_DIR}/dashboard-${width}.png`, fullPage: width < 800 });
    await page.close();
  }
} finally {
  await browser.close();
}
