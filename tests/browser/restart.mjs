// The server goes away and comes back while a user edits: the indicator turns red, then green
// again, and nothing typed is lost, not even what was typed while disconnected; the user is
// still herself after the restart, never "anonymous". This script
// runs the `tandem` binary itself (stopped with SIGTERM, started again on the same port and
// data dir), so the browser reconnects to the address it knows.
//
// usage: node restart.mjs <tandem binary> <data dir> <port> <artifacts dir>
import { TIMEOUT, launch } from './browser.mjs'
import { spawn } from 'node:child_process'

const [binary, dataDir, port, artifacts] = process.argv.slice(2)
const base = `http://127.0.0.1:${port}`
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function startServer () {
  const server = spawn(binary, ['serve', '--bind', `127.0.0.1:${port}`, '--data-dir', dataDir], { stdio: 'ignore' })
  const deadline = Date.now() + TIMEOUT
  for (;;) {
    try {
      if ((await fetch(`${base}/healthz`)).ok) return server
    } catch {}
    if (Date.now() > deadline) throw new Error('the server did not start')
    await sleep(50)
  }
}
const stopServer = (server) => new Promise((resolve) => { server.on('exit', resolve); server.kill('SIGTERM') })

const browser = await launch()
let server = await startServer()
try {
  const page = await (await browser.newContext()).newPage()
  await page.goto(`${base}/queries/9?name=Ada`)
  await page.waitForSelector('#connection[data-state=connected]', { timeout: TIMEOUT })
  await page.waitForSelector('.cm-content', { timeout: TIMEOUT })
  await page.click('.cm-content')
  await page.keyboard.type('SELECT 1;')
  // The edit has reached the server once the document it serves holds it.
  const deadline = Date.now() + TIMEOUT
  for (;;) {
    const bytes = await (await fetch(`${base}/api/v1/docs/default/queries/9`)).arrayBuffer()
    if (new TextDecoder().decode(bytes).includes('SELECT 1;')) break
    if (Date.now() > deadline) throw new Error('the edit never reached the server')
    await sleep(50)
  }
  await stopServer(server)
  await page.waitForFunction(() => ['reconnecting', 'degraded', 'offline'].includes(document.querySelector('#connection')?.dataset.state), null, { timeout: TIMEOUT })
  const red = await page.$eval('#connection', (n) => n.dataset.state)
  await page.keyboard.type(' SELECT 2;')
  // The indicator says what the page keeps for the server meanwhile.
  await page.waitForFunction(() => /edits? saved on this device/.test(document.querySelector('#connection .label')?.textContent ?? ''), null, { timeout: TIMEOUT })
  const label = await page.$eval('#connection .label', (n) => n.textContent)
  server = await startServer()
  await page.waitForSelector('#connection[data-state=connected]', { timeout: 60000 })
  // A second window, opened after the restart, sees everything, the offline edit included.
  const other = await (await browser.newContext()).newPage()
  await other.goto(`${base}/queries/9?name=Bob`)
  await other.waitForFunction(() => document.querySelector('.cm-content')?.innerText.includes('SELECT 1; SELECT 2;'), null, { timeout: TIMEOUT })
  await page.screenshot({ path: `${artifacts}/after-restart.png` })
  // Ada is still Ada after the restart (her token still verifies), never "anonymous".
  const users = async () => (await (await fetch(`${base}/api/v1/presence`)).json()).users.map((u) => u.user_id)
  const settled = Date.now() + TIMEOUT
  while (!(await users()).includes('ada') && Date.now() < settled) await sleep(100)
  const online = await users()
  if (!online.includes('ada') || online.includes('anonymous')) throw new Error(`online after the restart: ${online}`)
  console.log(JSON.stringify({ ok: true, red, label, online, text: await other.$eval('.cm-content', (n) => n.innerText) }))
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: String(err) }))
  process.exitCode = 1
} finally {
  await browser.close()
  await stopServer(server)
}
