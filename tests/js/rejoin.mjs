// A y-websocket client whose connection drops comes back with the same client id and the
// awareness clock it had, below the one the server removed its state with. The server tells it
// of that removal, the client announces itself again above it, and another client sees its
// cursor again (without that, only its renewals would catch up, up to 30 s later).
//
// usage: node rejoin.mjs <serverUrl> <room>
// Prints one JSON line: whether the server told the client and whether the observer saw it back.
import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'

const [serverUrl, room] = process.argv.slice(2)
const DEADLINE_MS = 20_000
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const until = async (what, test) => {
  const start = Date.now()
  while (!test()) {
    if (Date.now() - start > DEADLINE_MS) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}
const open = () => new WebsocketProvider(serverUrl, room, new Y.Doc(), { WebSocketPolyfill: WebSocket, disableBc: true })

const ada = open()
const observer = open()
ada.awareness.setLocalState({ user: { name: 'Ada' }, cursor: 1 })
const adaId = ada.doc.clientID
await until("Ada's cursor", () => observer.awareness.getStates().get(adaId)?.user?.name === 'Ada')

// The server removes her state when her socket drops; the observer hears it.
let told = false
ada.awareness.on('change', ({ removed }, origin) => { if (origin !== 'local' && removed.includes(adaId)) told = true })
ada.ws.close()
await until('the removal to reach the observer', () => !observer.awareness.getStates().has(adaId))
// She reconnects by herself; the server tells her of the removal and she is back.
await until('the server to tell Ada', () => told)
await until("Ada's cursor back", () => observer.awareness.getStates().get(adaId)?.user?.name === 'Ada')
console.log(JSON.stringify({ told, back: true }))
ada.destroy()
observer.destroy()
process.exit(0)
