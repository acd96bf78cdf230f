// A restore under concurrent editing, with the real yjs + y-websocket packages: Ann and Bob
// edit a query; Ann saves a version; Bob goes offline and keeps typing while Ann changes the
// query and restores the version; Bob comes back. Both must converge on the version's text
// plus Bob's offline edit, and the server's copy must be the same.
//
// usage: node restore.mjs <server base URL> <document>
// Prints one JSON line with what it saw; exits 0 only when everything held.
import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'

const [base, docName] = process.argv.slice(2)
const wsUrl = base.replace(/^http/, 'ws') + '/ws'
const DEADLINE_MS = 20_000
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const waitFor = async (what, predicate) => {
  const start = Date.now()
  while (!predicate()) {
    if (Date.now() - start > DEADLINE_MS) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}
const peer = (name) => {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(wsUrl, docName, doc, { WebSocketPolyfill: WebSocket, disableBc: true, maxBackoffTime: 200 })
  provider.awareness.setLocalStateField('user', { name })
  return { doc, provider, text: doc.getText('query') }
}
const api = `${base}/api/v1/docs/${docName}/versions`

let step = 'connect'
const ann = peer('Ann')
const bob = peer('Bob')
try {
  await waitFor('sync', () => ann.provider.synced && bob.provider.synced)
  step = 'type'
  ann.text.insert(0, 'SELECT region FROM sales')
  await waitFor('Bob sees it', () => bob.text.toString() === 'SELECT region FROM sales')
  step = 'version'
  const taken = await (await fetch(api, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ label: 'clean' }) })).json()
  step = 'offline'
  bob.provider.disconnect()
  // Bob, offline, appends a limit; Ann rewrites the query meanwhile.
  bob.text.insert(bob.text.length, ' LIMIT 10')
  ann.doc.transact(() => {
    ann.text.delete(7, 6)
    ann.text.insert(7, 'country, sum(revenue)')
  })
  await sleep(200)
  step = 'restore'
  const restored = await fetch(`${api}/${taken.version.id}/restore`, { method: 'POST' })
  if (restored.status !== 200) throw new Error(`restore answered ${restored.status}`)
  await waitFor('Ann sees the restore', () => ann.text.toString() === 'SELECT region FROM sales')
  step = 'back'
  bob.provider.connect()
  const expected = 'SELECT region FROM sales LIMIT 10'
  await waitFor('both converge', () => ann.text.toString() === expected && bob.text.toString() === expected)
  // What the server stored: a fresh client loads it.
  const carol = peer('Carol')
  await waitFor('a fresh client loads the same', () => carol.provider.synced && carol.text.toString() === expected)
  carol.provider.destroy()
  console.log(JSON.stringify({ ok: true, text: ann.text.toString() }))
} catch (err) {
  console.log(JSON.stringify({ ok: false, step, error: String(err), ann: ann.text.toString(), bob: bob.text.toString() }))
  process.exitCode = 1
} finally {
  ann.provider.destroy()
  bob.provider.destroy()
  // The awareness timers of the y-protocols package would keep the process alive.
  process.exit(process.exitCode ?? 0)
}
