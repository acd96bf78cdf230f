// Tabs share one connection: five tabs of one user in one browser cost the server one dashboard
// socket (the leader tab's, elected with the Web Locks API, relaying to the others over a
// BroadcastChannel); every tab gets every event once and in order; closing the leader hands
// over to another tab without a gap, still one socket. Without input in any tab the user turns
// idle, and a mouse move in one makes her online again.
//
// usage: node tabs.mjs <server base URL> <artifacts dir>
// Prints one JSON line with what it saw; exits 0 only when everything held.
import { TIMEOUT, launch, newContext } from './browser.mjs'
import { mkdirSync } from 'node:fs'

const [base, artifacts] = process.argv.slice(2)
mkdirSync(artifacts, { recursive: true })
const TABS = 5
const browser = await launch()
const errors = []
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** The server's dashboard connections of user `ada`. */
async function dashboards () {
  const response = await fetch(`${base}/api/v1/admin/connections`)
  const { connections } = await response.json()
  return connections.filter((c) => c.kind === 'dashboard' && c.user === 'ada').length
}
async function settleOn (count, what) {
  const deadline = Date.now() + TIMEOUT
  let now
  while ((now = await dashboards()) !== count) {
    if (Date.now() > deadline) throw new Error(`${what}: ${now} dashboard connections, not ${count}`)
    await sleep(100)
  }
}
async function publish (n) {
  const ids = []
  for (let i = 0; i < n; i++) {
    const response = await fetch(`${base}/api/v1/events?workspace=default`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'system_alert', message: `alert ${i}`, severity: 'info' })
    })
    if (response.status !== 201) throw new Error(`publish answered ${response.status}`)
    ids.push((await response.json()).id)
  }
  return ids
}
/** The alert ids a tab was handed, in the order it got them. */
const seenBy = (page) => page.evaluate(() => window.__alerts)
const leaderOf = async (pages) => {
  for (const page of pages) if (await page.evaluate(() => Boolean(window.tandem.client.hub))) return page
  return null
}

let step = 'start'
try {
  step = 'five tabs'
  const context = await newContext(browser)
  const pages = []
  for (let i = 0; i < TABS; i++) {
    const page = await context.newPage()
    page.on('pageerror', (e) => errors.push(`tab ${i}: ${e.message}`))
    await page.goto(`${base}/?name=Ada`)
    await page.waitForSelector('#connection[data-state=connected]', { timeout: TIMEOUT })
    await page.waitForFunction(() => window.tandem?.client, null, { timeout: TIMEOUT })
    await page.evaluate(() => {
      window.__alerts = []
      window.tandem.client.subscribe('system', (event) => window.__alerts.push(event.id))
    })
    pages.push(page)
  }
  await settleOn(1, 'five tabs open')

  step = 'every tab gets every event once'
  const first = await publish(5)
  for (const page of pages) {
    await page.waitForFunction((n) => window.__alerts.length >= n, first.length, { timeout: TIMEOUT })
  }
  await sleep(300)
  for (const [i, page] of pages.entries()) {
    const seen = await seenBy(page)
    if (JSON.stringify(seen) !== JSON.stringify(first)) throw new Error(`tab ${i} saw ${seen}, not ${first}`)
  }

  step = 'the leader closes'
  const leader = await leaderOf(pages)
  if (!leader) throw new Error('no tab leads')
  await leader.screenshot({ path: `${artifacts}/tabs-leader.png` })
  const rest = pages.filter((page) => page !== leader)
  await leader.close()
  // One of the others takes over, and what comes then reaches all of them once.
  const deadline = Date.now() + TIMEOUT
  let next = null
  while (!(next = await leaderOf(rest)) && Date.now() < deadline) await sleep(100)
  if (!next) throw new Error('no tab took over')
  await next.waitForFunction(() => window.tandem.client.status === 'connected', null, { timeout: TIMEOUT })
  const second = await publish(5)
  const all = [...first, ...second]
  for (const page of rest) {
    await page.waitForFunction((n) => window.__alerts.length >= n, all.length, { timeout: TIMEOUT })
  }
  await sleep(300)
  for (const [i, page] of rest.entries()) {
    const seen = await seenBy(page)
    if (JSON.stringify(seen) !== JSON.stringify(all)) throw new Error(`tab ${i} saw ${seen} after the handover, not ${all}`)
  }
  await settleOn(1, 'after the handover')
  const statusOfAda = async () => (await (await fetch(`${base}/api/v1/presence`)).json()).users.find((u) => u.user_id === 'ada')?.status
  const presenceIs = async (wanted, what) => {
    const deadline = Date.now() + TIMEOUT
    while (await statusOfAda() !== wanted) {
      if (Date.now() > deadline) throw new Error(`${what}: ada is ${await statusOfAda()}, not ${wanted}`)
      await sleep(100)
    }
  }

  // Nobody touches any tab: past the server's idle time the tabs say the user is idle; a
  // mouse move in one of them makes her online again.
  step = 'idle without input'
  await presenceIs('idle', 'no input in any tab')
  await rest[1].mouse.move(200, 200)
  await rest[1].mouse.move(220, 240)
  await presenceIs('online', 'a mouse move')
  const status = await statusOfAda()

  step = 'the last tabs close'
  for (const page of rest) await page.close()
  await settleOn(0, 'every tab closed')
  console.log(JSON.stringify({ ok: errors.length === 0, errors, tabs: TABS, events: all.length, status }))
} catch (err) {
  console.log(JSON.stringify({ ok: false, step, error: String(err.stack || err), errors }))
  process.exitCode = 1
} finally {
  await browser.close()
}
