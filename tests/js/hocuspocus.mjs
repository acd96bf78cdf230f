// The real @hocuspocus/provider (4.x, over the `ws` package) against a Tandem server's
// `/hocuspocus` endpoint, beside y-websocket clients on `/ws/{doc}`.
//
// usage: node hocuspocus.mjs <mode> <server ws://host:port> [args…]
//   converge <token> <docA> <docB>   two providers sharing one socket on two documents, a
//                                    y-websocket client on each, a second socket on docA:
//                                    edits, awareness and stateless both ways, then docB
//                                    detached while docA goes on
//   save <token> <doc> <text>        types <text>, waits until unsyncedChanges is back to 0,
//                                    prints and exits (the test then SIGKILLs the server)
//   refused <badToken> <doc>         PermissionDenied with the server's reason
//   readonly <token> <doc>           scope "readonly"; an edit stays unsynced and never lands
//   expiry <token> <doc>             a token that expires mid-session: closed with 4401
//   limit <token> <n> <prefix>       n+1 documents on one socket: the last one refused
// Prints one JSON line with what it saw; exits non-zero when anything is off.
import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider'

const [mode, server, ...args] = process.argv.slice(2)
const DEADLINE_MS = 20_000
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const waitFor = async (what, predicate, ms = DEADLINE_MS) => {
  const start = Date.now()
  while (!predicate()) {
    if (Date.now() - start > ms) throw new Error(`timed out waiting for ${what}`)
    await sleep(10)
  }
}

const socketOf = () =>
  new HocuspocusProviderWebsocket({ url: `${server}/hocuspocus`, WebSocketPolyfill: WebSocket })

// A provider on a shared socket, recording what it hears.
const open = (socket, name, token, extra = {}) => {
  const seen = { stateless: [], denied: [], scope: null, closes: [] }
  const document = new Y.Doc()
  const provider = new HocuspocusProvider({
    websocketProvider: socket,
    name,
    document,
    token,
    onStateless: ({ payload }) => seen.stateless.push(payload),
    onAuthenticationFailed: ({ reason }) => seen.denied.push(reason),
    onAuthenticated: ({ scope }) => { seen.scope = scope },
    onClose: ({ event }) => seen.closes.push(event.code),
    ...extra
  })
  provider.attach()
  return { provider, document, seen, text: () => document.getText('t').toString() }
}

const yws = (doc, token) => {
  const document = new Y.Doc()
  const provider = new WebsocketProvider(`${server}/ws`, doc, document, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    params: token ? { token } : {}
  })
  return { provider, document, text: () => document.getText('t').toString() }
}

const remoteNames = (awareness) =>
  [...awareness.getStates().entries()]
    .filter(([id]) => id !== awareness.clientID)
    .map(([, state]) => state?.user?.name)
    .filter(Boolean)
    .sort()

const result = {}
try {
  if (mode === 'converge') {
    const [token, docA, docB] = args
    const socket = socketOf()
    const a = open(socket, docA, token)
    const b = open(socket, docB, token)
    const wsA = yws(docA, token)
    const wsB = yws(docB, token)
    const other = open(socketOf(), docA, token)
    await waitFor('sync', () => a.provider.synced && b.provider.synced && other.provider.synced &&
      wsA.provider.synced && wsB.provider.synced)
    result.scope = a.seen.scope
    // Edits both ways, on both documents.
    a.document.getText('t').insert(0, 'hp-a;')
    b.document.getText('t').insert(0, 'hp-b;')
    wsA.document.getText('t').insert(0, 'ws-a;')
    wsB.document.getText('t').insert(0, 'ws-b;')
    await waitFor('convergence', () =>
      a.text() === wsA.text() && a.text() === other.text() && b.text() === wsB.text() &&
      a.text().length === 10 && b.text().length === 10)
    // Every update acknowledged, once durable.
    await waitFor('acknowledgements', () => a.provider.unsyncedChanges === 0 && b.provider.unsyncedChanges === 0)
    // Awareness both ways.
    a.provider.setAwarenessField('user', { name: 'hp' })
    wsA.provider.awareness.setLocalStateField('user', { name: 'ws' })
    await waitFor('awareness', () =>
      remoteNames(a.provider.awareness).includes('ws') && remoteNames(wsA.provider.awareness).includes('hp'))
    // Stateless both ways between the two Hocuspocus sockets; never to the sender itself.
    a.provider.sendStateless('from-a')
    other.provider.sendStateless('from-other')
    await waitFor('stateless', () => other.seen.stateless.includes('from-a') && a.seen.stateless.includes('from-other'))
    await sleep(100)
    result.echoedToSender = a.seen.stateless.includes('from-a')
    // Detaching docB leaves docA working on the same socket.
    b.provider.destroy()
    await sleep(100)
    a.document.getText('t').insert(0, 'after;')
    wsB.document.getText('t').insert(0, 'unseen;')
    await waitFor('docA after docB left', () => wsA.text().startsWith('after;') && other.text().startsWith('after;'))
    await waitFor('ack after detach', () => a.provider.unsyncedChanges === 0)
    result.bAfterDetach = b.text()
    result.a = a.text()
    result.b = wsB.text()
    result.awarenessOfHpAtWs = remoteNames(wsA.provider.awareness)
    for (const p of [a.provider, other.provider, wsA.provider, wsB.provider]) p.destroy()
    socket.destroy()
  } else if (mode === 'save') {
    const [token, doc, text] = args
    const a = open(socketOf(), doc, token)
    await waitFor('sync', () => a.provider.synced && a.provider.unsyncedChanges === 0)
    a.document.getText('t').insert(0, text)
    await waitFor('saved', () => a.provider.unsyncedChanges === 0)
    result.saved = a.text()
  } else if (mode === 'refused') {
    const [token, doc] = args
    const a = open(socketOf(), doc, token)
    await waitFor('refusal', () => a.seen.denied.length > 0)
    await sleep(200)
    result.denied = a.seen.denied
    result.synced = a.provider.synced
  } else if (mode === 'readonly') {
    const [token, doc] = args
    const a = open(socketOf(), doc, token)
    await waitFor('sync', () => a.provider.synced && a.provider.unsyncedChanges === 0)
    result.scope = a.seen.scope
    result.text = a.text()
    a.document.getText('t').insert(0, 'forbidden;')
    await sleep(500)
    result.unsynced = a.provider.unsyncedChanges
  } else if (mode === 'expiry') {
    const [token, doc] = args
    const a = open(socketOf(), doc, token)
    await waitFor('sync', () => a.provider.synced)
    await waitFor('close', () => a.seen.closes.length > 0, 15_000)
    result.closes = a.seen.closes
  } else if (mode === 'limit') {
    const [token, n, prefix] = args
    const socket = socketOf()
    const docs = []
    for (let i = 0; i <= Number(n); i++) docs.push(open(socket, `${prefix}${i}`, token))
    await waitFor('answers', () => docs.every((d) => d.seen.scope || d.seen.denied.length))
    result.scoped = docs.filter((d) => d.seen.scope).length
    result.denied = docs.flatMap((d) => d.seen.denied)
    // The socket still serves the others.
    docs[0].document.getText('t').insert(0, 'still;')
    await waitFor('ack', () => docs[0].provider.unsyncedChanges === 0)
  } else {
    throw new Error(`unknown mode ${mode}`)
  }
  console.log(JSON.stringify(result))
  process.exit(0)
} catch (err) {
  console.log(JSON.stringify({ ...result, error: String(err) }))
  process.exit(1)
}
