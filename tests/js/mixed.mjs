// One real Yjs client in a room with a Rust client (driven by tests/js.rs). Handshake through
// the document itself: the Rust side writes "rust-done" after its edits; this side then writes
// "js-done"; the Rust side answers "rust-final", and this side prints its text and the awareness
// states it saw, so the Rust test can compare them with its own.
//
// usage: node mixed.mjs <serverUrl> <room>
import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'

const [serverUrl, room] = process.argv.slice(2)
const DEADLINE_MS = 30_000
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const waitFor = async (what, predicate) => {
  const start = Date.now()
  while (!predicate()) {
    if (Date.now() - start > DEADLINE_MS) {
      console.error(`timed out waiting for ${what}`)
      process.exit(1)
    }
    await sleep(10)
  }
}

const doc = new Y.Doc()
const provider = new WebsocketProvider(serverUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
provider.awareness.setLocalStateField('user', { name: 'js' })
await waitFor('sync', () => provider.synced)
const text = doc.getText('t')
for (let i = 0; i < 50; i++) {
  text.insert(Math.floor(text.length / 2), `js${i};`)
  await sleep(1)
}
await waitFor('rust-done', () => text.toString().includes('rust-done'))
text.insert(text.length, 'js-done')
await waitFor('rust-final', () => text.toString().includes('rust-final'))
const names = [...provider.awareness.getStates().values()].map((s) => s.user && s.user.name)
console.log(JSON.stringify({ text: text.toString(), awareness: names }))
provider.destroy()
process.exit(0)
