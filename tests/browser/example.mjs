// The client library's example page (clients/js/examples), served by its documented command
// (`npm start`) from its own origin, as a team's app would be: two users see each other
// online, edit query 1 together, and get a notification live.
//
// usage: node example.mjs <Tandem base URL> <examples dir> <port for the example> <artifacts dir>
// Prints one JSON line with what it saw; exits 0 only when everything held.
import { TIMEOUT, launch, newPage } from './browser.mjs'
import { spawn } from 'node:child_process'

const [base, dir, port, artifacts] = process.argv.slice(2)
const errors = []
let step = 'start'
let served
const browser = await launch()
try {
  step = 'npm start'
  // A process group of its own: npm and the node it starts are stopped together.
  served = spawn('npm', ['start'], { cwd: dir, env: { ...process.env, PORT: port }, stdio: ['ignore', 'pipe', 'inherit'], detached: true })
  await new Promise((resolve, reject) => {
    served.stdout.on('data', (chunk) => { if (String(chunk).includes('the example:')) resolve() })
    served.once('exit', (code) => reject(new Error(`npm start exited with ${code}`)))
    setTimeout(() => reject(new Error('npm start did not serve the example')), TIMEOUT)
  })
  const page = (name) => `http://127.0.0.1:${port}/?name=${name}&server=${encodeURIComponent(base)}`

  step = 'two users'
  const ada = await newPage(browser, 'ada', errors)
  const bob = await newPage(browser, 'bob', errors)
  await ada.goto(page('Ada'))
  await bob.goto(page('Bob'))
  for (const p of [ada, bob]) await p.waitForSelector('#status[data-state=connected]', { timeout: TIMEOUT })
  await bob.waitForFunction(() => document.querySelector('#online').innerText.includes('Ada (online)'), null, { timeout: TIMEOUT })

  step = 'editing together'
  await ada.click('.cm-content')
  await ada.keyboard.type('SELECT 42')
  await bob.waitForFunction(() => document.querySelector('.cm-content')?.innerText.includes('SELECT 42'), null, { timeout: TIMEOUT })
  await bob.waitForFunction(() => [...document.querySelectorAll('.cm-ySelectionInfo')].some((n) => n.textContent === 'Ada'), null, { timeout: TIMEOUT })

  step = 'a notification'
  const published = await fetch(`${base}/api/v1/events?workspace=default`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'system_alert', message: 'deploy finished', severity: 'info' })
  })
  if (published.status !== 201) throw new Error(`publish answered ${published.status}`)
  for (const p of [ada, bob]) await p.waitForFunction(() => document.querySelector('#notifications').innerText.includes('deploy finished'), null, { timeout: TIMEOUT })
  await bob.screenshot({ path: `${artifacts}/example.png` })
  const text = await bob.$eval('.cm-content', (n) => n.innerText)
  console.log(JSON.stringify({ ok: errors.length === 0, errors, text }))
} catch (err) {
  console.log(JSON.stringify({ ok: false, step, error: String(err.stack || err), errors }))
  process.exitCode = 1
} finally {
  if (served?.pid) try { process.kill(-served.pid, 'SIGTERM') } catch {}
  await browser.close()
}
