// A crowded room of real Yjs clients: N y-websocket providers in one document, each with a
// cursor. y-websocket sends every awareness state it hears back to the server, so each newcomer
// echoes everyone's; that must neither close anyone (the per-connection awareness limit is for
// the clients a connection keeps, not for echoes) nor lose anyone's cursor. Every client must end
// up seeing all N states, then everyone leaves.
//
// usage: node crowd.mjs <serverUrl> <room> <clients>
// Prints one JSON line: the states each client saw (the smallest count) and the closes seen.
import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'

const [serverUrl, room, count] = process.argv.slice(2)
const clients = Number(count)
const DEADLINE_MS = 30_000
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const closes = []
const providers = []
for (let i = 0; i < clients; i++) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(serverUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  provider.on('connection-close', (event) => { if (event) closes.push({ client: i, code: event.code, reason: event.reason }) })
  provider.awareness.setLocalState({ user: { name: `user-${i}` }, cursor: i })
  providers.push(provider)
}

const start = Date.now()
const fewest = () => Math.min(...providers.map((p) => p.awareness.getStates().size))
while (fewest() < clients && Date.now() - start < DEADLINE_MS) await sleep(50)
const seen = fewest()
for (const provider of providers) provider.destroy()
console.log(JSON.stringify({ seen, closes }))
process.exit(0)
