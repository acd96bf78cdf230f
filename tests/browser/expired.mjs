// A session outlives its token. Ada's dashboard is embedded in an app that hands it tokens
// lasting a few seconds, minted when the page asks (`tandem:ready`). When hers expires the
// server closes her sockets with 4401; her page asks the app again and goes on with the fresh
// token: connected, her typing reaches Bob, and a notification still reaches her.
//
// usage: node expired.mjs <server base URL> <auth secret> <Bob's token> <a backend's token> <token lifetime, s>
// Prints one JSON line with what it saw; exits 0 only when everything held.
import { TIMEOUT, launch, newPage as pageOf } from './browser.mjs'
import { createServer } from 'node:http'
import { createHmac } from 'node:crypto'

const [base, secret, bobToken, backendToken, lifetime] = process.argv.slice(2)
const browser = await launch()
const errors = []
const newPage = (name) => pageOf(browser, name, errors)
const base64url = (data) => Buffer.from(data).toString('base64url')
/** An HS256 token for Ada that expires `lifetime` seconds from now: what the app's backend mints. */
const mint = () => {
  const header = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))
  const claims = base64url(JSON.stringify({ sub: 'ada', name: 'Ada', workspace: 'acme', plan: 'scale', exp: Math.floor(Date.now() / 1000) + Number(lifetime) }))
  const signature = createHmac('sha256', secret).update(`${header}.${claims}`).digest('base64url')
  return `${header}.${claims}.${signature}`
}

let step = 'start'
let appServer
let minted = 0
try {
  appServer = createServer((request, response) => {
    if (request.url === '/token') {
      minted++
      response.writeHead(200, { 'content-type': 'text/plain' })
      response.end(mint())
      return
    }
    response.writeHead(200, { 'content-type': 'text/html' })
    response.end(`<!doctype html><title>App</title>
      <iframe id="tandem" title="Tandem" width="1100" height="600" src="${base}/queries/21?parent_origin=${encodeURIComponent(APP)}"></iframe>
      <script>
        addEventListener('message', async (event) => {
          const frame = document.getElementById('tandem')
          if (event.source !== frame.contentWindow || event.data?.type !== 'tandem:ready') return
          const token = await (await fetch('/token')).text()
          frame.contentWindow.postMessage({ type: 'tandem:token', token }, ${JSON.stringify(base)})
        })
      </script>`)
  })
  await new Promise((resolve) => appServer.listen(0, '127.0.0.1', resolve))
  const APP = `http://127.0.0.1:${appServer.address().port}`

  step = 'signed in'
  const host = await newPage('ada')
  await host.goto(`${APP}/`)
  const ada = host.frameLocator('#tandem')
  await ada.locator('#connection[data-state=connected]').waitFor({ timeout: TIMEOUT })
  const bob = await newPage('bob')
  await bob.goto(`${base}/queries/21?token=${encodeURIComponent(bobToken)}`)
  await bob.waitForSelector('#connection[data-state=connected]', { timeout: TIMEOUT })
  const first = minted

  // Her token expires: the page asks the app for another and is connected again with it.
  step = 'the token expires'
  const deadline = Date.now() + TIMEOUT + Number(lifetime) * 1000
  while (minted === first && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100))
  if (minted === first) throw new Error('the page never asked for a fresh token')
  await ada.locator('#connection[data-state=connected]').waitFor({ timeout: TIMEOUT })

  step = 'typing after the renewal'
  await ada.locator('.cm-content').click()
  await host.keyboard.type('SELECT now();')
  await bob.waitForFunction(() => document.querySelector('.cm-content')?.innerText.includes('SELECT now();'), null, { timeout: TIMEOUT })

  step = 'a notification after the renewal'
  const published = await fetch(`${base}/api/v1/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${backendToken}` },
    body: JSON.stringify({ type: 'system_alert', message: 'still here', severity: 'info' })
  })
  if (published.status !== 201) throw new Error(`publish answered ${published.status}`)
  await ada.locator('#toasts', { hasText: 'still here' }).waitFor({ timeout: TIMEOUT })
  console.log(JSON.stringify({ ok: true, renewed: minted > first, errors }))
} catch (err) {
  console.log(JSON.stringify({ ok: false, step, minted, error: String(err), errors }))
  process.exitCode = 1
} finally {
  await browser.close()
  appServer?.close()
}
