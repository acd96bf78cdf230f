// What every browser script shares: Debian's chromium (npm cannot download browsers here), and
// pages whose uncaught errors are collected for the script's report.
import { chromium } from 'playwright-core'

/** How long any one wait for the page may take. */
export const TIMEOUT = 20000

export const launch = () => chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking']
})

/** A context of its own (its own storage: another user), 1200×700. */
export const newContext = (browser) => browser.newContext({ viewport: { width: 1200, height: 700 } })

/** A page in a context of its own; its uncaught errors go to `errors`, named `name`. */
export async function newPage (browser, name, errors) {
  const page = await (await newContext(browser)).newPage()
  page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`))
  return page
}
