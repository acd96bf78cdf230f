// Two browser contexts as two users: both open the same query; typing in one shows in the
// other with the typist's cursor and name; both appear in the online widget; a query_completed
// published over HTTP updates the result panel in both. Screenshots of both windows go to the
// artifacts directory.
//
// usage: node collaborate.mjs <server base URL> <artifacts dir>
// Prints one JSON line with what it saw; exits 0 only when everything held.
import { chromium } from 'playwright-core'
import { mkdirSync } from 'node:fs'

const [base, artifacts] = process.argv.slice(2)
mkdirSync(artifacts, { recursive: true })
const TIMEOUT = 20000
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking']
})
const errors = []
const open = async (name, path) => {
  const page = await (await browser.newContext({ viewport: { width: 1200, height: 700 } })).newPage()
  page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`))
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name} console: ${m.text()}`) })
  await page.goto(`${base}${path}?name=${name}`)
  await page.waitForSelector('#connection[data-state=connected]', { timeout: TIMEOUT })
  return page
}
const textOf = (page, selector) => page.$eval(selector, (node) => node.innerText)

try {
  const ada = await open('Ada', '/queries/7')
  const bob = await open('Bob', '/queries/7')
  await ada.waitForSelector('.cm-content', { timeout: TIMEOUT })
  await ada.click('.cm-content')
  await ada.keyboard.type('SELECT count(*) FROM orders')
  await bob.waitForFunction(() => document.querySelector('.cm-content').innerText.includes('SELECT count(*) FROM orders'), null, { timeout: TIMEOUT })
  // Ada's cursor, with her name, in Bob's editor; the banner says she is there.
  await bob.waitForFunction(() => [...document.querySelectorAll('.cm-ySelectionInfo')].some((n) => n.textContent === 'Ada'), null, { timeout: TIMEOUT })
  await bob.waitForFunction(() => document.querySelector('#editing-banner').textContent.includes('Ada'), null, { timeout: TIMEOUT })
  await bob.click('.cm-content')
  await bob.keyboard.press('End')
  await bob.keyboard.type(' WHERE paid')
  await ada.waitForFunction(() => document.querySelector('.cm-content').innerText.includes('WHERE paid'), null, { timeout: TIMEOUT })
  await ada.waitForFunction(() => [...document.querySelectorAll('.cm-ySelectionInfo')].some((n) => n.textContent === 'Bob'), null, { timeout: TIMEOUT })

  // A result arrives: both result panels show it.
  const published = await fetch(`${base}/api/v1/events?workspace=default`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'query_completed', query_id: 7, result_count: 100, execution_time: 2.5 })
  })
  if (published.status !== 201) throw new Error(`publish answered ${published.status}`)
  for (const page of [ada, bob]) {
    await page.waitForFunction(() => document.querySelector('#result-status')?.textContent === 'completed', null, { timeout: TIMEOUT })
  }
  const rows = await textOf(bob, '#result-count')

  // Both in the online widget of the dashboard.
  const carol = await open('Carol', '/')
  await carol.waitForFunction(() => ['Ada', 'Bob'].every((n) => document.querySelector('#online-users').innerText.includes(n)), null, { timeout: TIMEOUT })
  const online = await textOf(carol, '#online-users')

  await ada.screenshot({ path: `${artifacts}/ada.png` })
  await bob.screenshot({ path: `${artifacts}/bob.png` })
  await carol.screenshot({ path: `${artifacts}/dashboard.png` })
  console.log(JSON.stringify({ ok: true, rows, online, errors }))
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: String(err), errors }))
  process.exitCode = 1
} finally {
  await browser.close()
}
