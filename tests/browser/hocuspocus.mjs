// The dashboard's query editor (y-websocket) and a small page on @hocuspocus/provider edit the
// same query: what one types shows in the other, each sees the other's presence, and the
// Hocuspocus page is told its edits are saved.
//
// usage: node hocuspocus.mjs <server base URL> <artifacts dir>
// Prints one JSON line with what it saw; exits 0 only when everything held.
import { build } from 'esbuild'
import { mkdirSync } from 'node:fs'
import { TIMEOUT, launch, newPage } from './browser.mjs'

const [base, artifacts] = process.argv.slice(2)
mkdirSync(artifacts, { recursive: true })
const bundle = await build({
  entryPoints: [new URL('./hocuspocus-page.js', import.meta.url).pathname],
  bundle: true,
  format: 'iife',
  write: false,
  logLevel: 'silent'
})
const browser = await launch()
const errors = []
const seen = {}
let step = 'start'
try {
  step = 'dashboard editor'
  const ada = await newPage(browser, 'Ada', errors)
  await ada.goto(`${base}/queries/7?name=Ada`)
  await ada.waitForSelector('#connection[data-state=connected]', { timeout: TIMEOUT })
  await ada.waitForSelector('.cm-content', { timeout: TIMEOUT })
  await ada.click('.cm-content')
  await ada.keyboard.type('SELECT region FROM sales')

  step = 'hocuspocus page'
  const bob = await newPage(browser, 'Bob', errors)
  await bob.goto(`${base}/healthz`)
  await bob.setContent('<!doctype html><title>Hocuspocus editor</title><body></body>')
  await bob.addScriptTag({ content: bundle.outputFiles[0].text })
  const ws = base.replace(/^http/, 'ws')
  await bob.evaluate(([url]) => window.tandemHp.start(url, 'default/queries/7', '', 'Bob'), [`${ws}/hocuspocus`])
  await bob.waitForFunction(() => window.tandemHp.synced(), null, { timeout: TIMEOUT })
  await bob.waitForFunction(() => window.tandemHp.value() === 'SELECT region FROM sales', null, { timeout: TIMEOUT })

  step = 'typing in the hocuspocus page'
  await bob.click('#editor')
  await bob.keyboard.press('End')
  await bob.keyboard.type(' GROUP BY region')
  await ada.waitForFunction(() => (document.querySelector('.cm-content')?.innerText ?? '').includes('GROUP BY region'), null, { timeout: TIMEOUT })
  await bob.waitForFunction(() => window.tandemHp.unsynced() === 0, null, { timeout: TIMEOUT })

  step = 'presence both ways'
  await ada.waitForFunction(() => (document.querySelector('#editing-banner')?.textContent ?? '').includes('Bob'), null, { timeout: TIMEOUT })
  await bob.waitForFunction(() => window.tandemHp.peers().includes('Ada'), null, { timeout: TIMEOUT })

  step = 'typing in the dashboard again'
  await ada.click('.cm-content')
  await ada.keyboard.press('Control+End')
  await ada.keyboard.type(';')
  await bob.waitForFunction(() => window.tandemHp.value().endsWith(';'), null, { timeout: TIMEOUT })
  seen.dashboard = await ada.$eval('.cm-content', (n) => n.innerText)
  seen.hocuspocus = await bob.evaluate(() => window.tandemHp.value())
  await ada.screenshot({ path: `${artifacts}/ada-with-hocuspocus.png` })
  await bob.screenshot({ path: `${artifacts}/bob-hocuspocus.png` })
  step = 'done'
} catch (err) {
  seen.failed = `${step}: ${err.message}`
}
seen.errors = errors
seen.ok = !seen.failed && errors.length === 0
await browser.close()
console.log(JSON.stringify(seen))
process.exit(seen.ok ? 0 : 1)
