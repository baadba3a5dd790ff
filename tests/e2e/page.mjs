// Opens the page of `turboquant serve` in headless Chromium, clicks Generate, waits for both
// columns to finish, prints what they show as JSON and saves a screenshot.
// Usage: node page.mjs http://127.0.0.1:PORT screenshot.png
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 760 } });
  await page.goto(url);
  await page.waitForSelector("#cache option", { state: "attached" });
  await page.fill("#prompt", "The old lighthouse keeper looked at the sea and said");
  await page.selectOption("#cache", "turbo3");
  await page.fill("#n_predict", "40");
  await page.click("#generate");
  await page.waitForSelector("#status[data-finished='true']", { timeout: 120000 });
  await page.waitForSelector("#left-stats[data-done='true']");
  await page.waitForSelector("#right-stats[data-done='true']");
  const read = (id) => page.textContent(id);
  const result = {
    left: await read("#left-text"),
    right: await read("#right-text"),
    leftStats: await read("#left-stats"),
    rightStats: await read("#right-stats"),
    fidelity: await read("#fidelity"),
    status: await read("#status"),
  };
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
