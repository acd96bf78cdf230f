// Sign-in on a server that checks tokens: the page takes its token from the embedding app (an
// iframe on another origin that answers the page's `tandem:ready` with `tandem:token`), or from
// `?token=`; opened bare, it says a token is needed and connects nowhere. An app on an origin
// the server's --frame-ancestors does not name cannot frame it at all.
//
// usage: node embedded.mjs <server base URL> <token> <read-only token>
// Prints one JSON line with what it saw; exits 0 only when everything held.
import { TIMEOUT, launch, newPage as pageOf } from './browser.mjs'
import { createServer } from 'node:http'

const [base, token, readOnlyToken] = process.argv.slice(2)
const browser = await launch()
const errors = []
const newPage = (name) => pageOf(browser, name, errors)
let step = 'embedded'
let appServer
try {
  // The embedding app, served from its own origin (on loopback too: Chromium lets no public
  // page frame a local one): it hands the frame a token when asked, and only to that frame.
  appServer = createServer((request, response) => {
    response.writeHead(200, { 'content-type': 'text/html' })
    response.end(`<!doctype html><title>App</title>
      <iframe id="tandem" title="Tandem" width="1100" height="600" src="${base}/queries/5?parent_origin=${encodeURIComponent(APP)}"></iframe>
      <script>
        addEventListener('message', (event) => {
          const frame = document.getElementById('tandem')
          if (event.source !== frame.contentWindow || event.data?.type !== 'tandem:ready') return
          frame.contentWindow.postMessage({ type: 'tandem:token', token: ${JSON.stringify(token)} }, ${JSON.stringify(base)})
        })
      </script>`)
  })
  await new Promise((resolve) => appServer.listen(0, '127.0.0.1', resolve))
  const APP = `http://127.0.0.1:${appServer.address().port}`
  const host = await newPage('host')
  await host.goto(`${APP}/`)
  const frame = host.frameLocator('#tandem')
  await frame.locator('#connection[data-state=connected]').waitFor({ timeout: TIMEOUT })
  const embedded = await frame.locator('#me').innerText()
  await frame.locator('.cm-content').waitFor({ timeout: TIMEOUT })

  // The same app from an origin --frame-ancestors does not name: the browser refuses to show
  // the dashboard in its frame, so it never asks for the token.
  step = 'framed by an app not allowed to'
  const stranger = await newPage('stranger')
  await stranger.goto(`http://localhost:${appServer.address().port}/`)
  await stranger.waitForLoadState('load')
  const framedElsewhere = await stranger.frames()[1]?.evaluate(() => !!document.querySelector('#app')).catch(() => false) ?? false

  step = 'token in the URL'
  const direct = await newPage('direct')
  await direct.goto(`${base}/queries/5?token=${encodeURIComponent(token)}`)
  await direct.waitForSelector('#connection[data-state=connected]', { timeout: TIMEOUT })

  // A token that may only read the query: the editor takes no edits and says why; nothing
  // typed reaches the document.
  step = 'read-only token'
  const reader = await newPage('reader')
  await reader.goto(`${base}/queries/5?token=${encodeURIComponent(readOnlyToken)}`)
  await reader.waitForSelector('#connection[data-state=connected]', { timeout: TIMEOUT })
  await reader.waitForFunction(() => (document.querySelector('#title-lock')?.textContent ?? '').includes('Read only'), null, { timeout: TIMEOUT })
  await reader.click('.cm-content')
  await reader.keyboard.type('DROP TABLE orders')
  const readOnly = {
    editable: await reader.$eval('.cm-content', (node) => node.contentEditable),
    typed: await reader.$eval('.cm-content', (node) => node.innerText.includes('DROP')),
    titleReadOnly: await reader.$eval('#title', (node) => node.readOnly)
  }

  step = 'no token'
  const bare = await newPage('bare')
  await bare.goto(`${base}/?name=Eve`)
  await bare.waitForFunction(() => document.querySelector('[role=alert]')?.innerText.includes('Sign-in needed'), null, { timeout: TIMEOUT })
  const bareIndicator = await bare.$eval('#connection', (node) => node.checkVisibility())
  console.log(JSON.stringify({ ok: true, embedded, framedElsewhere, bareIndicator, readOnly, errors }))
} catch (err) {
  const frames = browser.contexts().flatMap((c) => c.pages()).flatMap((p) => p.frames())
  const shown = await Promise.all(frames.map((f) => f.evaluate(() => document.body?.innerText).catch((e) => String(e))))
  console.log(JSON.stringify({ ok: false, step, error: String(err), shown, errors }))
  process.exitCode = 1
} finally {
  await browser.close()
  appServer?.close()
}
