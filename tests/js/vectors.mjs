// Prints protocol byte vectors produced by the real y-protocols + lib0 packages, as JSON, for
// tests/js.rs to decode with tandem-sync. Each entry: { bytes: [...], ...what they mean }.
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as authProtocol from 'y-protocols/auth'

const messageSync = 0
const messageAwareness = 1
const messageAuth = 2
const messageQueryAwareness = 3

const frame = (write) => {
  const encoder = encoding.createEncoder()
  write(encoder)
  return Array.from(encoding.toUint8Array(encoder))
}

const vectors = {}

const empty = new Y.Doc()
vectors.step1_empty = {
  bytes: frame((e) => { encoding.writeVarUint(e, messageSync); syncProtocol.writeSyncStep1(e, empty) })
}

const doc = new Y.Doc()
doc.clientID = 7
doc.getText('t').insert(0, 'hello')
vectors.step2_hello = {
  text: 'hello',
  bytes: frame((e) => { encoding.writeVarUint(e, messageSync); syncProtocol.writeSyncStep2(e, doc) })
}
vectors.update_hello = {
  text: 'hello',
  bytes: frame((e) => { encoding.writeVarUint(e, messageSync); syncProtocol.writeUpdate(e, Y.encodeStateAsUpdate(doc)) })
}
vectors.step1_hello = {
  client: 7,
  clock: 5,
  bytes: frame((e) => { encoding.writeVarUint(e, messageSync); syncProtocol.writeSyncStep1(e, doc) })
}

const big = new Y.Doc()
big.clientID = 2 ** 32 + 1
const awareness = new awarenessProtocol.Awareness(big)
awareness.setLocalState({ a: 1 })
vectors.awareness_big_id = {
  client: big.clientID,
  clock: 1,
  state: '{"a":1}',
  bytes: frame((e) => {
    encoding.writeVarUint(e, messageAwareness)
    encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(awareness, [big.clientID]))
  })
}
const max = new Y.Doc()
max.clientID = Number.MAX_SAFE_INTEGER
const maxAwareness = new awarenessProtocol.Awareness(max)
maxAwareness.setLocalState({ user: { name: 'Ada', color: '#ff0' } })
awarenessProtocol.removeAwarenessStates(maxAwareness, [max.clientID], 'test')
vectors.awareness_removed_max_id = {
  client: max.clientID,
  clock: 2,
  state: null,
  bytes: frame((e) => {
    encoding.writeVarUint(e, messageAwareness)
    encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(maxAwareness, [max.clientID]))
  })
}
vectors.permission_denied = {
  reason: 'denied',
  bytes: frame((e) => { encoding.writeVarUint(e, messageAuth); authProtocol.writePermissionDenied(e, 'denied') })
}
vectors.query_awareness = {
  bytes: frame((e) => { encoding.writeVarUint(e, messageQueryAwareness) })
}

console.log(JSON.stringify(vectors))
awareness.destroy(); maxAwareness.destroy(); process.exit(0)
