// A real Yjs client (y-websocket provider) in a workspace's presence room: it sets its
// presence with the standard awareness API and waits to see a dashboard user the server
// mirrors into the room. Driven by tests/js.rs, which watches the same presence on /ws.
//
// usage: node presence.mjs <serverUrl> <room> <token> <user id to wait for>
// Prints one JSON line with the state it saw for that user.
import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'

const [serverUrl, room, token, awaited] = process.argv.slice(2)
const DEADLINE_MS = 30_000
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const doc = new Y.Doc()
const provider = new WebsocketProvider(serverUrl, room, doc, {
  WebSocketPolyfill: WebSocket,
  disableBc: true,
  params: { token }
})
provider.awareness.setLocalState({
  status: 'online',
  workspace: 'queries',
  current_page: '/queries/42',
  user: { name: 'Grace', color: 'teal' }
})

const start = Date.now()
let seen
while (!seen) {
  if (Date.now() - start > DEADLINE_MS) {
    console.error('never saw user', awaited, [...provider.awareness.getStates().values()])
    process.exit(1)
  }
  seen = [...provider.awareness.getStates().values()].find((s) => String(s.user_id) === awaited)
  await sleep(20)
}
// Stay a moment so the other side sees this client online, then leave.
await sleep(1000)
console.log(JSON.stringify({ seen }))
provider.destroy()
doc.destroy()
process.exit(0)
