// The page on a phone (390×844): one column, a header on one line, the SQL editor the width of
// the screen; toasts small and styled by severity: a critical alert and a failed query stay
// until closed and are never folded into "+N more", a query's toast links to the query; the
// settings mute an event type; an approval request is approved from its toast.
//
// usage: node phone.mjs <server base URL> <artifacts dir>
// Prints one JSON line with what it saw; exits 0 only when everything held.
import { TIMEOUT, launch } from './browser.mjs'
import { mkdirSync } from 'node:fs'

const [base, artifacts] = process.argv.slice(2)
mkdirSync(artifacts, { recursive: true })
const browser = await launch()
const errors = []
const publish = async (event) => {
  const response = await fetch(`${base}/api/v1/events?workspace=default`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(event) })
  if (response.status !== 201) throw new Error(`publish answered ${response.status}`)
}
let step = 'start'
try {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true })
  const page = await context.newPage()
  page.on('pageerror', (e) => errors.push(e.message))

  step = 'editor'
  await page.goto(`${base}/queries/5?name=Ada`)
  await page.waitForSelector('#connection[data-state=connected]', { timeout: TIMEOUT })
  await page.waitForSelector('.cm-content', { timeout: TIMEOUT })
  const editor = await page.evaluate(() => ({
    width: document.querySelector('#editor').getBoundingClientRect().width,
    header: document.querySelector('header.bar').getBoundingClientRect().height,
    overflow: document.documentElement.scrollWidth > innerWidth + 1
  }))
  await page.screenshot({ path: `${artifacts}/phone-editor.png` })

  step = 'toasts'
  await publish({ type: 'system_alert', message: 'database down', severity: 'critical' })
  await publish({ type: 'query_failed', query_id: 5, error: 'timeout' })
  for (let i = 0; i < 6; i++) await publish({ type: 'system_alert', message: `note ${i}`, severity: 'info' })
  await page.waitForFunction(() => document.querySelector('#toasts .more'), null, { timeout: TIMEOUT })
  const toasts = await page.evaluate(() => {
    const all = [...document.querySelectorAll('#toasts .toast')]
    const box = document.querySelector('#toasts').getBoundingClientRect()
    return {
      critical: document.querySelector('#toasts .toast.critical')?.getAttribute('role'),
      failed: document.querySelector('#toasts .toast.error a')?.getAttribute('href'),
      closable: all.filter((t) => !t.classList.contains('more')).every((t) => t.querySelector('.toast-close')),
      share: box.height / innerHeight
    }
  })
  await page.screenshot({ path: `${artifacts}/phone-toasts.png` })
  await page.click('#toasts .toast.critical .toast-close')
  const closed = await page.evaluate(() => !document.querySelector('#toasts .toast.critical'))

  step = 'dashboard'
  await page.goto(`${base}/?name=Ada`)
  await page.waitForSelector('#connection[data-state=connected]', { timeout: TIMEOUT })
  const dashboard = await page.evaluate(() => ({
    header: document.querySelector('header.bar').getBoundingClientRect().height,
    overflow: document.documentElement.scrollWidth > innerWidth + 1,
    columns: new Set([...document.querySelectorAll('main > section')].map((s) => Math.round(s.getBoundingClientRect().left))).size
  }))
  await page.screenshot({ path: `${artifacts}/phone-dashboard.png` })

  step = 'approve'
  // An approval request's toast has Approve and Deny; approving is an event everyone sees.
  await publish({ type: 'approval_request', approval_id: 77, title: 'Ship the release' })
  await page.waitForSelector('#toasts .toast .approve', { timeout: TIMEOUT })
  await page.click('#toasts .toast .approve')
  await page.waitForFunction(() => (document.querySelector('#toasts')?.innerText ?? '').includes('Approved'), null, { timeout: TIMEOUT })
  await page.waitForFunction(() => (document.querySelector('#unread')?.innerText ?? '').includes('Approval 77 approved by Ada'), null, { timeout: TIMEOUT })
  const approved = true

  step = 'chat toast'
  // A chat message's toast opens its session.
  await publish({ type: 'new_chat_message', session_id: 55, message: 'ping from the toast', sender: 'visitor' })
  await page.waitForSelector('#toasts a[href="/?chat=55"]', { timeout: TIMEOUT })
  await page.click('#toasts a[href="/?chat=55"]')
  await page.waitForFunction(() => document.querySelector('#chat-session h3')?.textContent === 'Chat 55' && (document.querySelector('#chat-session')?.innerText ?? '').includes('ping from the toast'), null, { timeout: TIMEOUT })
  const chatOpened = true

  step = 'settings'
  // Muting system alerts in the settings: the next alert is not pushed, the failed query
  // published after it is (events come in order, so its toast proves the alert's absence).
  await page.click('#settings summary')
  await page.waitForSelector('#pref-system_alert', { timeout: TIMEOUT })
  await page.uncheck('#pref-system_alert')
  await page.waitForFunction(() => /muted/.test(document.querySelector('#settings-note')?.textContent ?? ''), null, { timeout: TIMEOUT })
  await page.evaluate(() => { for (const node of document.querySelectorAll('#toasts .toast')) node.remove() })
  await publish({ type: 'system_alert', message: 'muted alert', severity: 'critical' })
  await publish({ type: 'query_failed', query_id: 6, error: 'after the muted one' })
  await page.waitForFunction(() => (document.querySelector('#toasts')?.innerText ?? '').includes('after the muted one'), null, { timeout: TIMEOUT })
  const mutedShown = await page.evaluate(() => (document.querySelector('#toasts')?.innerText ?? '').includes('muted alert'))
  console.log(JSON.stringify({ ok: errors.length === 0, errors, editor, toasts, closed, dashboard, mutedShown, approved, chatOpened }))
} catch (err) {
  console.log(JSON.stringify({ ok: false, step, error: String(err.stack || err), errors }))
  process.exitCode = 1
} finally {
  await browser.close()
}
