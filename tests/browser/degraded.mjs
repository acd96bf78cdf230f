// Degraded mode: Ada's browser cannot open WebSockets (as behind a proxy that blocks them), so
// her page falls back to HTTP (long-polling for the dashboard, polling sync for the document)
// and says so. She and Bob, on a working WebSocket, still edit one query together and see each
// other's cursor; when WebSockets work again her page goes back to them and shows connected;
// when they fail once more it degrades again and still syncs; everything she typed is on the
// server.
//
// usage: node degraded.mjs <server base URL> <artifacts dir>
// Prints one JSON line with what it saw; exits 0 only when everything held.
import { TIMEOUT, launch, newContext } from './browser.mjs'
import { mkdirSync } from 'node:fs'

const [base, artifacts] = process.argv.slice(2)
mkdirSync(artifacts, { recursive: true })
// Back from degraded mode takes one reconnect attempt, whose backoff may have grown to ~15 s.
const RECOVERY_TIMEOUT = 45000
const browser = await launch()
const errors = []
const open = async (name, path, { blockSockets = false } = {}) => {
  const context = await newContext(browser)
  if (blockSockets) {
    // Every WebSocket of the page goes to a closed port until the test lets them through: the
    // page sees real connection failures, never an open socket.
    await context.addInitScript(() => {
      const Real = window.WebSocket
      window.__blockSockets = true
      window.WebSocket = class extends Real {
        constructor (url, protocols) {
          super(window.__blockSockets ? 'ws://127.0.0.1:9/blocked' : url, protocols)
        }
      }
    })
  }
  const page = await context.newPage()
  page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`))
  // The blocked sockets' failures are what this test is about; any other console error is not.
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().includes('127.0.0.1:9')) errors.push(`${name} console: ${m.text()}`)
  })
  await page.goto(`${base}${path}?name=${name}`)
  return page
}
const state = (page) => page.$eval('#connection', (node) => node.dataset.state)
const editorHas = (page, text) => page.waitForFunction((t) => document.querySelector('.cm-content')?.innerText.includes(t), text, { timeout: TIMEOUT })
const cursorOf = (page, name) => page.waitForFunction((n) => [...document.querySelectorAll('.cm-ySelectionInfo')].some((node) => node.textContent === n), name, { timeout: TIMEOUT })

let step = 'start'
let carol
try {
  step = 'Ada degrades'
  const ada = await open('Ada', '/queries/12', { blockSockets: true })
  await ada.waitForSelector('#connection[data-state=degraded]', { timeout: TIMEOUT })
  const label = await ada.$eval('#connection', (node) => node.innerText)
  const bob = await open('Bob', '/queries/12')
  await bob.waitForSelector('#connection[data-state=connected]', { timeout: TIMEOUT })

  // Ada types over HTTP; Bob sees her text, her cursor and her name.
  step = 'Bob sees what Ada types'
  await ada.waitForSelector('.cm-content', { timeout: TIMEOUT })
  await ada.click('.cm-content')
  await ada.keyboard.type('SELECT 42')
  await editorHas(bob, 'SELECT 42')
  await cursorOf(bob, 'Ada')
  await bob.waitForFunction(() => (document.querySelector('#editing-banner')?.textContent ?? '').includes('Ada'), null, { timeout: TIMEOUT })

  // Bob types over his WebSocket; Ada's next poll brings his text and cursor.
  step = 'Ada sees what Bob types'
  await bob.click('.cm-content')
  await bob.keyboard.press('End')
  await bob.keyboard.type(' AS answer')
  await editorHas(ada, 'SELECT 42 AS answer')
  await cursorOf(ada, 'Bob')

  // The dashboard sees Ada online and in the query, though she has no socket at all.
  step = 'the dashboard sees Ada'
  carol = await open('Carol', '/')
  await carol.waitForFunction(() => (document.querySelector('#online-users')?.innerText ?? '').includes('Ada'), null, { timeout: TIMEOUT })
  await carol.waitForFunction(() => /Query 12[^·]*·.*Ada/.test((document.querySelector('#queries')?.innerText ?? '')), null, { timeout: TIMEOUT })
  await ada.screenshot({ path: `${artifacts}/ada-degraded.png` })
  const degradedState = await state(ada)

  // WebSockets work again: Ada's page goes back to them and shows connected.
  step = 'Ada reconnects'
  await ada.evaluate(() => { window.__blockSockets = false })
  await ada.waitForSelector('#connection[data-state=connected]', { timeout: RECOVERY_TIMEOUT })
  await ada.keyboard.press('End')
  await ada.keyboard.type(';')
  await editorHas(bob, 'SELECT 42 AS answer;')

  // They fail again, this time after the server saw her socket, and took her cursor away with
  // it: she degrades again, and her text and cursor still reach Bob.
  step = 'Ada degrades again'
  await ada.evaluate(() => { window.__blockSockets = true; window.tandem.provider.ws?.close() })
  await bob.waitForFunction(() => ![...document.querySelectorAll('.cm-ySelectionInfo')].some((n) => n.textContent === 'Ada'), null, { timeout: TIMEOUT })
  await ada.waitForSelector('#connection[data-state=degraded]', { timeout: TIMEOUT })
  await ada.keyboard.type(' -- again')
  await editorHas(bob, 'SELECT 42 AS answer; -- again')
  await cursorOf(bob, 'Ada')

  // Everything typed is on the server.
  step = 'the server holds the text'
  const stored = await fetch(`${base}/api/v1/docs/default/queries/12`)
  const bytes = new Uint8Array(await stored.arrayBuffer())
  const text = await ada.evaluate((data) => {
    const { Y } = window.tandem
    const doc = new Y.Doc()
    Y.applyUpdate(doc, new Uint8Array(data))
    return doc.getText('query').toString()
  }, [...bytes])
  if (text !== 'SELECT 42 AS answer; -- again') throw new Error(`the server holds ${JSON.stringify(text)}`)
  console.log(JSON.stringify({ ok: true, label, degradedState, text, errors }))
} catch (err) {
  const dashboard = carol && await carol.$eval('#app', (node) => node.innerText).catch(() => null)
  console.log(JSON.stringify({ ok: false, step, error: String(err), dashboard, errors }))
  process.exitCode = 1
} finally {
  await browser.close()
}
