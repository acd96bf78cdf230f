// Document sync over HTTP (`POST /api/v1/docs/{doc}/sync`), for when WebSockets fail.

import * as Y from 'yjs'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as decoding from 'lib0/decoding'
import { POLL_MAX_MS, POLL_MIN_MS } from './retry.js'
import { anySignal, timeoutSignal } from './signals.js'

/** While the tab is hidden, cursor updates go out at most this often. */
export const HIDDEN_FLUSH_MS = 10000
/** How long one sync request may take before it is given up (and retried). */
const POLL_REQUEST_TIMEOUT_MS = 20000
// Others drop a cursor not renewed for 30 s: a renewal goes out within this long.
const RENEWAL_DELAY_MS = 10000

export const hidden = () => typeof document !== 'undefined' && document.hidden

export const toBase64 = (bytes) => {
  let binary = ''
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000))
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}
export const fromBase64 = (text) => Uint8Array.from(atob(text.replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0))

/** The client ids an encoded awareness update holds. */
function awarenessClients (update) {
  const decoder = decoding.createDecoder(update)
  const clients = []
  for (let n = decoding.readVarUint(decoder); n > 0; n--) {
    clients.push(decoding.readVarUint(decoder))
    decoding.readVarUint(decoder) // clock
    decoding.readVarString(decoder) // state
  }
  return clients
}

/** Whether state vector `a` holds anything `b` lacks. */
function ahead (a, b) {
  const theirs = Y.decodeStateVector(b)
  for (const [client, clock] of Y.decodeStateVector(a)) if (clock > (theirs.get(client) ?? 0)) return true
  return false
}

/**
 * Keeps a document in sync through `POST /api/v1/docs/{doc}/sync` while WebSockets fail: each
 * round posts the state vector, the edits the server has not confirmed and our cursor, and
 * applies what the server answers (its edits and everyone's cursors). It polls every 2 s while
 * anything changes and backs off to 30 s while nothing does; a local edit or cursor move polls
 * at once, and the renewal of our cursor (every 15 s) goes out within 10 s.
 */
export class DocPoller {
  /**
   * @param {import('./tandem.js').Tandem} t
   * @param {string} name the document
   * @param {Y.Doc} doc
   * @param {awarenessProtocol.Awareness} awareness
   * @param {{ result(ok: boolean): void, readOnly(): void }} report
   */
  constructor (t, name, doc, awareness, report) {
    this.t = t
    this.path = `/api/v1/docs/${name.split('/').map(encodeURIComponent).join('/')}/sync`
    this.doc = doc
    this.awareness = awareness
    this.report = report
    this.running = false
    this.readOnly = false
    this.serverStateVector = null
    this.timer = null
    this.due = Infinity
    this.onUpdate = (update, origin) => {
      if (origin === this || this.readOnly) return
      this.pending = this.pending ? Y.mergeUpdates([this.pending, update]) : update
      this.soon()
    }
    // A changed cursor goes soon; a renewal (same state, newer clock) only needs to go in time.
    this.onAwarenessChange = (_, origin) => { if (origin === 'local') this.soon() }
    this.onAwarenessUpdate = (_, origin) => {
      if (origin === 'local') this.schedule(Math.min(this.interval, RENEWAL_DELAY_MS))
    }
  }

  start () {
    if (this.running) return
    this.running = true
    // The first round learns the server's state vector; what it lacks goes in the second.
    this.serverStateVector = null
    this.pending = null
    // Set when the server refused what we hold; cleared by the next episode (a WebSocket's
    // full sync in between may have settled it).
    this.refused = false
    this.interval = POLL_MIN_MS
    this.doc.on('update', this.onUpdate)
    this.awareness.on('change', this.onAwarenessChange)
    this.awareness.on('update', this.onAwarenessUpdate)
    this.schedule(0)
  }

  stop () {
    this.running = false
    clearTimeout(this.timer)
    this.timer = null
    this.due = Infinity
    this.abort?.abort()
    this.doc.off('update', this.onUpdate)
    this.awareness.off('change', this.onAwarenessChange)
    this.awareness.off('update', this.onAwarenessUpdate)
  }

  /** Polls within a moment (a hidden tab waits longer, to coalesce). */
  soon () {
    this.interval = POLL_MIN_MS
    this.schedule(hidden() ? HIDDEN_FLUSH_MS : 250)
  }

  schedule (delay) {
    if (!this.running) return
    const at = Date.now() + delay
    if (this.timer && this.due <= at) return
    clearTimeout(this.timer)
    this.due = at
    this.timer = setTimeout(() => { this.timer = null; this.due = Infinity; this.round() }, delay)
  }

  async round () {
    if (!this.running) return
    if (this.inFlight) {
      // Asked for while a request is out: it goes right after.
      this.again = true
      return
    }
    this.inFlight = true
    this.again = false
    const sending = this.pending
    this.pending = null
    const body = { client_id: this.doc.clientID, state_vector: toBase64(Y.encodeStateVector(this.doc)) }
    if (sending) body.update = toBase64(sending)
    if (this.awareness.getLocalState() !== null) {
      body.awareness = toBase64(awarenessProtocol.encodeAwarenessUpdate(this.awareness, [this.doc.clientID]))
    }
    let next
    this.abort = new AbortController()
    try {
      const response = await this.t.request(this.path, {
        method: 'POST',
        json: body,
        signal: anySignal([this.abort.signal, timeoutSignal(POLL_REQUEST_TIMEOUT_MS)])
      })
      if (!response.ok) {
        const refusal = await response.json().catch(() => ({}))
        // A refused update is not retried: a read-only token never writes, and an update the
        // server cannot take (too large, say) would be refused again. It stays in this
        // client, and goes with the full sync of the next WebSocket.
        if (sending && [403, 400, 413].includes(response.status)) {
          if (refusal.error === 'read_only') this.markReadOnly()
          this.refused = true
          console.warn(`tandem: the server refused an update (${refusal.error}); it stays in this client`)
          this.report.result(true)
          next = this.interval
          return
        }
        throw new Error(`sync answered ${response.status}`)
      }
      const answer = await response.json()
      if (!this.running) return
      if (answer.access === 'read') this.markReadOnly()
      let changed = false
      const mark = (_, origin) => { if (origin === this) changed = true }
      this.doc.on('update', mark)
      try {
        Y.applyUpdate(this.doc, fromBase64(answer.update), this)
      } finally {
        this.doc.off('update', mark)
      }
      this.applyAwareness(answer.awareness ? fromBase64(answer.awareness) : null)
      const theirs = fromBase64(answer.state_vector)
      // Whatever we hold that the server lacks: on the first round everything (deletions made
      // while the socket was down included), later whatever its state vector says it lacks.
      if (!this.readOnly && !this.refused && (!this.serverStateVector || ahead(Y.encodeStateVector(this.doc), theirs))) {
        const lacking = Y.encodeStateAsUpdate(this.doc, theirs)
        this.pending = this.pending ? Y.mergeUpdates([lacking, this.pending]) : lacking
        next = 0
      }
      this.serverStateVector = theirs
      this.interval = changed || sending ? POLL_MIN_MS : Math.min(this.interval * 2, POLL_MAX_MS)
      this.report.result(true)
    } catch (err) {
      // Unconfirmed edits are sent again, after the backoff (updates are idempotent).
      this.pending = sending && this.pending ? Y.mergeUpdates([sending, this.pending]) : (sending || this.pending)
      if (!this.running) return
      this.interval = Math.min(this.interval * 2, POLL_MAX_MS)
      next = this.interval
      this.report.result(false, next)
    } finally {
      this.inFlight = false
      if (this.again) next = Math.min(next ?? 250, 250)
      this.schedule(next ?? (this.pending ? 250 : this.interval))
    }
  }

  markReadOnly () {
    if (this.readOnly) return
    this.readOnly = true
    this.report.readOnly()
  }

  /** Takes the room's awareness states; the clients it no longer holds have gone. */
  applyAwareness (update) {
    const present = new Set(update ? awarenessClients(update) : [])
    // States the provider dropped when its socket closed keep their clock, and the same clock
    // again would be ignored: forget it, so they come back at once.
    for (const client of present) {
      if (client !== this.doc.clientID && !this.awareness.states.has(client)) this.awareness.meta.delete(client)
    }
    // The answer also holds the removal of our own state, if the server removed it (when our
    // socket closed): y-protocols then raises our clock, and the next round announces it again.
    const clock = this.awareness.meta.get(this.doc.clientID)?.clock
    if (update) awarenessProtocol.applyAwarenessUpdate(this.awareness, update, this)
    if (this.awareness.meta.get(this.doc.clientID)?.clock !== clock) this.soon()
    const gone = [...this.awareness.getStates().keys()].filter((client) => client !== this.doc.clientID && !present.has(client))
    if (gone.length) awarenessProtocol.removeAwarenessStates(this.awareness, gone, this)
  }
}
