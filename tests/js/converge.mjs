// Several real Yjs clients (y-websocket v3 and v1 providers over the `ws` package) edit one
// document concurrently, with random disconnects, against a Tandem server; then they must all
// converge and see each other's awareness.
//
// usage: node converge.mjs <serverUrl> <room> <clients> <rounds>
// Prints one JSON line with the outcome; exits 0 only when everything converged.
import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import { WebsocketProvider as WebsocketProviderV1 } from 'y-websocket-v1'

const [serverUrl, room, clientCount = '6', roundCount = '40'] = process.argv.slice(2)
const clients = Number(clientCount)
const rounds = Number(roundCount)
const DEADLINE_MS = 30_000

// A seeded generator, so a failure can be replayed.
let seed = 12345
const random = () => {
  seed = (seed * 1103515245 + 12345) % 2147483648
  return seed / 2147483648
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const peers = []
for (let i = 0; i < clients; i++) {
  const doc = new Y.Doc()
  const Provider = i % 2 === 0 ? WebsocketProvider : WebsocketProviderV1
  const provider = new Provider(serverUrl, room, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true, // same process: make sure every byte goes through the server
    maxBackoffTime: 200
  })
  provider.awareness.setLocalStateField('user', { name: `js-${i}`, version: i % 2 === 0 ? 'v3' : 'v1' })
  peers.push({ doc, provider, name: `js-${i}` })
}

const waitFor = async (what, predicate) => {
  const start = Date.now()
  while (!predicate()) {
    if (Date.now() - start > DEADLINE_MS) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

await waitFor('initial sync', () => peers.every((p) => p.provider.synced))

for (let round = 0; round < rounds; round++) {
  for (const peer of peers) {
    const text = peer.doc.getText('t')
    const pos = Math.floor(random() * (text.length + 1))
    peer.doc.transact(() => {
      text.insert(pos, `${peer.name}.${round};`)
      if (text.length > 40 && random() < 0.3) text.delete(Math.floor(random() * 20), 3)
      peer.doc.getMap('m').set(peer.name, round)
      peer.doc.getArray('a').push([`${peer.name}:${round}`])
    })
    // Random disconnects: edits made while offline must merge on reconnect.
    if (random() < 0.1 && peer.provider.wsconnected) {
      peer.provider.disconnect()
      const provider = peer.provider
      setTimeout(() => provider.connect(), 20 + Math.floor(random() * 100))
    }
  }
  await sleep(5)
}

for (const peer of peers) if (!peer.provider.shouldConnect) peer.provider.connect()
await waitFor('reconnect', () => peers.every((p) => p.provider.wsconnected && p.provider.synced))

const state = (doc) => JSON.stringify({
  t: doc.getText('t').toString(),
  m: Object.entries(doc.getMap('m').toJSON()).sort(),
  a: doc.getArray('a').toArray()
})
let converged = false
try {
  await waitFor('convergence', () => {
    const states = peers.map((p) => state(p.doc))
    return states.every((s) => s === states[0]) && peers[0].doc.getArray('a').length === clients * rounds
  })
  converged = true
} catch (e) {
  console.error(e.message)
}
let awarenessSeen = false
try {
  await waitFor('awareness', () => peers.every((p) => {
    const names = [...p.provider.awareness.getStates().values()].map((s) => s.user && s.user.name)
    return peers.every((q) => names.includes(q.name))
  }))
  awarenessSeen = true
} catch (e) {
  console.error(e.message)
}

const result = {
  converged,
  awarenessSeen,
  items: peers[0].doc.getArray('a').length,
  textLength: peers[0].doc.getText('t').length,
  text: peers[0].doc.getText('t').toString()
}
console.log(JSON.stringify(result))
for (const peer of peers) peer.provider.destroy()
process.exit(converged && awarenessSeen ? 0 : 1)
