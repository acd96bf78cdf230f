// A collaborative document: a Y.Doc kept in sync by y-websocket, by `POST …/sync` polling
// while WebSockets keep failing (and back), optionally stored in the browser (y-indexeddb) for
// offline work, with who is in it.

import * as Y from 'yjs'
import * as decoding from 'lib0/decoding'
import { WebsocketProvider } from 'y-websocket'
import { Emitter } from './emitter.js'
import { backoff, BACKOFF_MAX_MS, DEGRADED_AFTER_FAILURES } from './retry.js'
import { DocPoller, HIDDEN_FLUSH_MS, hidden } from './poller.js'

// The y-websocket message type of the auth protocol, and its kinds.
const AUTH_MESSAGE = 2
const AUTH_DENIED = 0
const AUTH_GRANTED = 1

export class TandemDoc extends Emitter {
  /**
   * @param {import('./tandem.js').Tandem} t
   * @param {string} name
   * @param {{ ydoc?: Y.Doc, offline?: any, user?: object }} options
   */
  constructor (t, name, options = {}) {
    super()
    this.t = t
    this.name = name
    this.ydoc = options.ydoc ?? new Y.Doc()
    this.ownDoc = !options.ydoc
    /** @type {'connecting' | 'connected' | 'reconnecting' | 'degraded' | 'offline' | 'signed-out'} */
    this.status = 'connecting'
    this.readOnly = false
    this.synced = false
    this.destroyed = false
    this.cleanups = []
    // Offline edits are kept in the browser and sync when the connection is back.
    const Store = options.offline === undefined ? t.options.offline : options.offline
    this.local = Store ? new Store(name, this.ydoc) : null
    // y-websocket puts the room name into the URL as it is: its segments go percent-encoded.
    const room = name.split('/').map(encodeURIComponent).join('/')
    this.provider = new WebsocketProvider(`${t.wsUrl}/ws`, room, this.ydoc, {
      connect: false,
      params: { token: t.tokens.value ?? '' },
      WebSocketPolyfill: t.WebSocket,
      maxBackoffTime: BACKOFF_MAX_MS
    })
    this.awareness = this.provider.awareness
    if (options.user) this.awareness.setLocalStateField('user', options.user)
    this.poller = new DocPoller(t, name, this.ydoc, this.awareness, {
      result: (ok, retryIn) => this.setStatus(ok ? 'degraded' : (t.signedOut ? 'signed-out' : 'offline'), ok ? {} : { nextRetryAt: Date.now() + retryIn }),
      readOnly: () => this.markReadOnly()
    })
    this.whenSynced = new Promise((resolve) => { this.resolveSynced = resolve })
    this.wire()
    if (typeof document !== 'undefined') this.slowWhenHidden()
    t.tokens.current().then((token) => {
      if (this.destroyed) return
      if (token) this.provider.params.token = token
      this.provider.connect()
    }, () => {})
  }

  wire () {
    const { provider, poller, t } = this
    let everConnected = false
    // y-websocket waits min(2^n · 100 ms, maxBackoffTime) after the n-th failure; setting the
    // cap just before it computes the delay (at most 2^n · 100 ms) makes the delay ours,
    // jittered. The token is read again for every attempt, so a refreshed one is used.
    provider.on('connection-close', (event) => {
      if (this.destroyed) return
      const failures = provider.wsUnsuccessfulReconnects + (provider.wsconnected ? 0 : 1)
      const delay = backoff(failures)
      provider.maxBackoffTime = delay
      if (event?.code === 4401 || t.tokens.expired()) {
        const refused = provider.params.token
        t.tokenRefused(refused).then((fresh) => {
          if (!fresh) this.setStatus('signed-out')
        })
      }
      if (t.tokens.value) provider.params.token = t.tokens.value
      if (failures >= DEGRADED_AFTER_FAILURES) {
        if (!poller.running) {
          poller.start()
          this.setStatus('offline', { nextRetryAt: Date.now() + delay })
        }
      } else if (this.status !== 'signed-out') {
        this.setStatus(everConnected ? 'reconnecting' : 'connecting', { nextRetryAt: Date.now() + delay })
      }
    })
    provider.on('status', ({ status }) => {
      if (status === 'connected') {
        everConnected = true
        poller.stop()
        this.setStatus('connected')
      }
    })
    // The server says a read-only connection so at once (auth "permission granted: read"), and
    // refuses edits with "permission denied".
    provider.messageHandlers[AUTH_MESSAGE] = (_encoder, decoder) => {
      const kind = decoding.readVarUint(decoder)
      const text = decoding.readVarString(decoder)
      if (kind === AUTH_DENIED || (kind === AUTH_GRANTED && text === 'read')) this.markReadOnly()
    }
    // Offline edits merged with others': said once the document is back in sync.
    let offlineSince = null
    let editedOffline = false
    let othersArrived = false
    provider.on('status', ({ status }) => {
      if (status === 'disconnected' && this.synced && offlineSince === null) {
        offlineSince = Date.now()
        editedOffline = false
        othersArrived = false
      }
    })
    const onUpdate = (_update, origin) => {
      // Polling over HTTP keeps the document in sync: what it sends and gets is not offline work.
      if (offlineSince === null || poller.running) return
      if (origin === provider || origin === poller) othersArrived = true
      else if (origin !== this.local) editedOffline = true
    }
    this.ydoc.on('update', onUpdate)
    this.cleanups.push(() => this.ydoc.off('update', onUpdate))
    const synced = () => {
      if (!this.synced) {
        this.synced = true
        this.resolveSynced()
        this.emit('synced')
      }
      if (offlineSince !== null) {
        const since = offlineSince
        offlineSince = null
        if (editedOffline && othersArrived) this.emit('offline-merge', { since })
      }
    }
    provider.on('sync', (isSynced) => { if (isSynced) synced() })
    const firstPoll = (_update, origin) => { if (origin === poller) synced() }
    this.ydoc.on('update', firstPoll)
    this.cleanups.push(() => this.ydoc.off('update', firstPoll))
    const onEditing = (document) => { if (document === this.name) this.emit('editing', this.editing) }
    this.cleanups.push(t.editing.on('change', onEditing))
  }

  setStatus (status, detail = {}) {
    if (this.destroyed) return
    if (status === this.status && status !== 'offline') return
    this.status = status
    this.emit('status', status, detail)
  }

  markReadOnly () {
    if (this.readOnly) return
    this.readOnly = true
    this.emit('read-only')
  }

  /** The users in this document now, as the server's `editing` events say (`active`: changed their awareness lately). */
  get editing () {
    return this.t.editing.usersOf(this.name)
  }

  /** Sets this client's `user` in the document's awareness (`{ name, color, colorLight }`: y-codemirror's cursor label). */
  setUser (user) {
    this.awareness.setLocalStateField('user', user)
  }

  /** A fresh token: used from the next attempt, which comes at once when the socket is down. */
  tokenChanged (token) {
    this.provider.params.token = token
    this.reconnectNow()
    if (this.poller.running) this.poller.soon()
  }

  reconnectNow () {
    if (!this.destroyed && !this.provider.wsconnected && !this.provider.wsconnecting) this.provider.connect()
  }

  /**
   * While the tab is hidden, our own awareness updates (cursor moves, renewals) are coalesced
   * and sent at most every 10 s; they go at once when the tab is visible again. Renewals come
   * every 15 s, so others never see our state lapse (they drop it after 30 s). Anything else
   * the provider sends goes as it always did.
   */
  slowWhenHidden () {
    const { provider } = this
    const send = provider._awarenessUpdateHandler
    const own = this.ydoc.clientID
    let held = false
    let timer = null
    const flush = () => {
      clearTimeout(timer)
      timer = null
      if (!held) return
      held = false
      send({ added: [], updated: [own], removed: [] }, 'hidden-tab')
    }
    const slowed = (changes, origin) => {
      const mine = origin === 'local' && [...changes.added, ...changes.updated].includes(own)
      if (!hidden() || !mine) {
        if (mine) { held = false; clearTimeout(timer); timer = null }
        send(changes, origin)
        return
      }
      held = true
      timer ??= setTimeout(flush, HIDDEN_FLUSH_MS)
    }
    provider.awareness.off('update', send)
    provider.awareness.on('update', slowed)
    const visible = () => { if (!hidden()) flush() }
    document.addEventListener('visibilitychange', visible)
    this.cleanups.push(() => {
      clearTimeout(timer)
      provider.awareness.off('update', slowed)
      document.removeEventListener('visibilitychange', visible)
    })
  }

  /** Closes the document: its socket, its polling and its offline store (what is stored stays). */
  destroy () {
    if (this.destroyed) return
    this.destroyed = true
    this.poller.stop()
    for (const cleanup of this.cleanups) cleanup()
    this.provider.destroy()
    // The provider's awareness renews and checks states on a timer until destroyed.
    this.awareness.destroy()
    this.local?.destroy()
    if (this.ownDoc) this.ydoc.destroy()
    this.t.docs.delete(this.name)
    this.emit('destroyed')
    this.clear()
  }
}
