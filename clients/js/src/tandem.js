// One Tandem client per app: the token, the dashboard connection (shared by the browser's
// tabs), events in id order each once across reconnects and the long-poll fallback, presence,
// locks, notifications, activity, chat badges and documents.

import { Emitter } from './emitter.js'
import { CHANNELS, matches } from './channels.js'
import { TokenSource } from './token.js'
import { Presence } from './presence.js'
import { Locks } from './locks.js'
import { Approvals, Badges, Editing, Notifications, Preferences, activityFeed } from './feeds.js'
import { Hub } from './hub.js'
import { SoloGroup, TabGroup, canShare } from './tabs.js'
import { TandemDoc } from './doc.js'
import { backoff, pause } from './retry.js'
import { timeoutSignal } from './signals.js'

/** A follower tab asks for what it missed in at most this many pages, */
const CATCH_UP_ROUNDS = 50
/** each request given this long, */
const CATCH_UP_TIMEOUT_MS = 15000
/** and this many failed requests in a row before what it missed counts as lost. */
const CATCH_UP_ATTEMPTS = 5

export class Tandem extends Emitter {
  constructor (options = {}) {
    super()
    const url = options.url ?? globalThis.location?.origin
    if (typeof url !== 'string' || !/^https?:\/\//.test(url)) throw new TypeError('createTandem needs the server\'s http(s) url')
    this.options = options
    this.url = url.replace(/\/+$/, '')
    this.wsUrl = this.url.replace(/^http/, 'ws')
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket
    if (typeof this.WebSocket !== 'function') throw new TypeError('no WebSocket: pass one (in Node, the `ws` package) as options.WebSocket')
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis)
    /** @type {'connecting' | 'connected' | 'reconnecting' | 'degraded' | 'signed-out' | 'offline'} */
    this.status = 'connecting'
    this.statusDetail = {}
    this.signedOut = false
    // The last event delivered; `resuming`: go on from it even at 0.
    this.lastId = 0
    this.resuming = false
    // Ids a history page already showed: not delivered again.
    this.known = new Set()
    this.catchingUp = false
    this.held = []
    this.subscriptions = new Set()
    /** @type {Map<string, TandemDoc>} */
    this.docs = new Map()
    this.destroyed = false
    this.hub = null
    this.group = null
    this.cleanups = []
    this.tokens = new TokenSource(options, (token) => this.tokenChanged(token))
    this.presence = new Presence(this, options)
    this.locks = new Locks(this)
    this.badges = new Badges(this)
    this.notifications = new Notifications(this, { limit: options.historyLimit })
    this.activity = activityFeed(this, { limit: options.historyLimit })
    this.editing = new Editing(this)
    this.preferences = new Preferences(this)
    this.approvals = new Approvals(this)
    this.listen('online', () => this.reconnectNow())
    this.listen('offline', () => { if (this.status !== 'connected') this.setStatus('offline', {}) })
    // A tab that goes tells the leader at once (its presence and locks no longer count); one
    // that comes back from the browser's page cache says it is there again.
    this.listen('pagehide', () => this.group?.toLeader({ kind: 'bye' }))
    this.listen('pageshow', (event) => {
      if (!event.persisted || !this.group) return
      this.presence.announce(true)
      if (!this.group.leader) this.catchUp()
    })
    /** Resolves once the client has loaded what it shows and is connecting. */
    this.ready = this.start()
  }

  /** The user the token names (its `sub`). */
  get user () { return this.tokens.claims().user }
  /** The workspace the token names (or `options.workspace`). */
  get workspace () { return this.tokens.claims().workspace ?? this.options.workspace ?? null }

  listen (type, handler) {
    if (typeof addEventListener !== 'function') return
    addEventListener(type, handler)
    this.cleanups.push(() => removeEventListener(type, handler))
  }

  async start () {
    let token = await this.tokens.current().catch(() => null)
    if (this.destroyed) return
    if (!token) {
      // Signed out from the start: everything starts with the first token that comes
      // (`setToken`, or `getToken` asked again by `reconnectNow`).
      this.signedOut = true
      this.setStatus('signed-out')
      token = await new Promise((resolve) => {
        this.waitingForToken = resolve
      })
      this.waitingForToken = null
      if (this.destroyed || !token) return
    }
    this.tokens.schedule()
    this.notifications.restore()
    const shared = this.options.shareConnection !== false && canShare()
    this.group = shared ? new TabGroup(`tandem:${this.url}:${this.workspace ?? ''}:${this.user}`) : new SoloGroup()
    this.group.onToAll = (message) => this.fromLeader(message)
    this.group.onToLeader = (message) => this.hub?.fromTab(message)
    this.group.onLeader = () => {
      if (this.destroyed) return
      this.hub = new Hub(this)
      this.presence.announce(true)
      this.locks.resend()
      this.emit('leader')
    }
    // What it shows first: the latest notifications and activity (then it goes on from where
    // they end, so nothing comes twice or goes missing), who is online and in which document.
    await this.loadHistory()
    if (this.destroyed) return
    this.presence.load().catch(() => {})
    this.editing.load().catch(() => {})
    this.badges.load().catch(() => {})
    this.presence.start()
    if (this.group instanceof SoloGroup) {
      this.group.start()
      return
    }
    // Another tab may lead already, and relays from where it is: this tab first asks for
    // what came after its history (what is relayed meanwhile waits, and comes once).
    this.catchingUp = true
    this.group.start()
    this.group.toLeader({ kind: 'hello' })
    this.presence.announce(true)
    this.locks.resend()
    await this.catchUp()
  }

  /** The latest notifications and activity; the stream resumes after the older of the two. */
  async loadHistory (replace = false) {
    const [activity, notifications] = await Promise.allSettled([this.activity.load(replace), this.notifications.load(replace)])
    const pages = [activity.value, notifications.value]
    if (pages.every((page) => typeof page?.last_id === 'number')) {
      this.lastId = Math.min(...pages.map((page) => page.last_id))
      this.resuming = true
      this.known = new Set(pages.flatMap((page) => page.events.map((event) => event.id)))
    }
  }

  // --- events

  /**
   * Calls `handler` with every event of `channels` (or `'*'`), in id order and each once, from
   * now on; returns the function that ends the subscription.
   */
  subscribe (channels, handler) {
    const list = typeof channels === 'string' ? [channels] : channels
    for (const channel of list) if (channel !== '*' && !CHANNELS.includes(channel)) throw new TypeError(`unknown channel ${channel}`)
    const subscription = { channels: new Set(list), handler }
    this.subscriptions.add(subscription)
    return () => this.subscriptions.delete(subscription)
  }

  /** What the leader tells every tab. */
  fromLeader (message) {
    switch (message.kind) {
      case 'frames':
        if (this.catchingUp) this.held.push(...message.frames)
        else this.deliverAll(message.frames)
        break
      case 'status':
        this.setStatus(message.status, message.detail)
        break
      case 'locks-lost':
        this.locks.connectionLost()
        break
      case 'leader':
        if (message.tab === this.group.tab) break
        // A new leader: it hears this tab's presence and locks, and this tab catches up on
        // what may have come between the old leader's last frame and the new one's first.
        this.presence.announce(true)
        this.locks.resend()
        this.catchUp()
        break
    }
  }

  /**
   * Asks the server for the events after the last one this tab has; what the leader relays
   * meanwhile waits. A request that fails is tried again after a backoff; when it keeps
   * failing, what was missed is treated as lost (`resync`).
   */
  async catchUp () {
    if (this.catchingUp && this.catchUpRunning) return
    this.catchingUp = true
    this.catchUpRunning = true
    let failures = 0
    try {
      for (let round = 0; round < CATCH_UP_ROUNDS && (this.resuming || this.lastId) && !this.destroyed;) {
        let page
        try {
          const response = await this.request(`/api/v1/events?since=${this.lastId}&timeout=0`, { signal: timeoutSignal(CATCH_UP_TIMEOUT_MS) })
          if (!response.ok) throw new Error(`events answered ${response.status}`)
          page = await response.json()
        } catch (err) {
          if (++failures >= CATCH_UP_ATTEMPTS || this.signedOut) {
            console.warn('tandem: could not catch up on events', err)
            this.resync()
            break
          }
          await pause(backoff(failures + 3))
          continue
        }
        round++
        const frames = [...page.events]
        frames.push(page.resync_required ? { type: 'resync_required', oldest: page.oldest, latest: page.last_id } : { type: 'cursor', last_id: page.last_id })
        this.deliverAll(frames)
        if (!page.events.length || page.resync_required) break
      }
    } finally {
      this.catchingUp = false
      this.catchUpRunning = false
      const held = this.held
      this.held = []
      this.deliverAll(held)
    }
  }

  deliverAll (frames) {
    for (const frame of frames) {
      if (frame?.type === 'batch' && Array.isArray(frame.events)) this.deliverAll(frame.events)
      else if (frame && typeof frame === 'object') this.deliver(frame)
    }
  }

  /** One frame: each event once (events come in id order, so one at or below the last id is one this client has). */
  deliver (event) {
    if (this.destroyed) return
    if (typeof event.id === 'number') {
      if (event.id <= this.lastId) return
      this.lastId = event.id
      this.resuming = true
      if (this.known.delete(event.id)) return
    }
    switch (event.type) {
      case 'subscribed':
        if (event.idle_after_ms > 0) this.presence.idleAfter(event.idle_after_ms)
        return
      case 'resync_required':
        // What this client missed is gone from the log: it reloads what it shows, and goes on
        // from the latest event.
        if (typeof event.latest === 'number') this.lastId = event.latest
        this.resync()
        return
      case 'error':
        // The server could not replay what we missed (and the channels are live without it).
        if (event.code === 'storage_unavailable') this.resync()
        this.emit('server-error', event)
        return
      case 'cursor':
        // Where a page of events ended: the next one goes on from there (even at 0).
        if (typeof event.last_id === 'number' && event.last_id > this.lastId) this.lastId = event.last_id
        this.resuming = true
        return
      case 'pong': case 'unsubscribed':
        return
    }
    this.presence.handle(event)
    this.locks.handle(event)
    this.badges.handle(event)
    this.editing.handle(event)
    this.notifications.handle(event)
    this.activity.handle(event)
    if (typeof event.id !== 'number') return
    for (const { channels, handler } of [...this.subscriptions]) {
      if (!matches(channels, event)) continue
      try {
        handler(event)
      } catch (err) {
        console.error('tandem: an event handler failed', event.type, err)
      }
    }
  }

  /** Events were lost for good: everything shown is loaded again, and `resync` tells the app. */
  resync () {
    this.emit('resync')
    this.known = new Set()
    this.activity.load(true).catch(() => {})
    this.notifications.load(true).catch(() => {})
    this.presence.load(true).catch(() => {})
    this.editing.load(true).catch(() => {})
    this.badges.load().catch(() => {})
  }

  // --- status and tokens

  setStatus (status, detail = {}) {
    if (this.destroyed) return
    if (status !== 'signed-out') this.signedOut = false
    if (status === this.status && JSON.stringify(detail) === JSON.stringify(this.statusDetail)) return
    this.status = status
    this.statusDetail = detail
    this.emit('status', status, detail)
  }

  /** The server refused `token` (4401, 401): resolves whether a fresh one is at hand. */
  async tokenRefused (token) {
    const fresh = await this.tokens.refresh(token)
    if (!fresh && !this.destroyed) {
      this.signedOut = true
      this.setStatus('signed-out')
    }
    return fresh
  }

  /** Hands the client a fresh token (an app that renews them itself). */
  setToken (token) {
    this.tokens.set(token)
  }

  tokenChanged (token) {
    this.signedOut = false
    this.waitingForToken?.(token)
    this.emit('token', token)
    this.reconnectNow()
    for (const doc of this.docs.values()) doc.tokenChanged(token)
  }

  /** The network or a token is back: connect now rather than at the end of the backoff. */
  reconnectNow () {
    // Signed out before it started: `getToken` may have one now.
    if (this.waitingForToken) this.tokens.refresh(null).catch(() => {})
    this.hub?.reconnectNow()
    for (const doc of this.docs.values()) doc.reconnectNow()
  }

  /**
   * `fetch` on the server with the token (`json`: a body sent as JSON); a 401 asks for a
   * fresh token and tries once more.
   */
  async request (path, { method = 'GET', json, headers = {}, body, signal } = {}) {
    for (let attempt = 0; ; attempt++) {
      const token = await this.tokens.current()
      const sent = { ...headers, authorization: `Bearer ${token}` }
      if (json !== undefined) {
        sent['content-type'] = 'application/json'
        body = JSON.stringify(json)
      }
      const response = await this.fetch(`${this.url}${path}`, { method, headers: sent, body, signal })
      if (response.status !== 401 || attempt > 0 || !(await this.tokenRefused(token))) return response
    }
  }

  // --- documents

  /**
   * The document `name` (`{workspace}/queries/42`): its Y.Doc, awareness and provider, synced
   * over a WebSocket, over HTTP polling while sockets fail, and (with `offline`, y-indexeddb's
   * `IndexeddbPersistence`) stored in the browser. The same name gives the same document until
   * it is destroyed.
   */
  doc (name, options = {}) {
    if (typeof name !== 'string' || !name) throw new TypeError('a document needs a name')
    if (this.destroyed) throw new Error('this Tandem client is destroyed')
    let doc = this.docs.get(name)
    if (!doc) {
      doc = new TandemDoc(this, name, options)
      this.docs.set(name, doc)
    }
    return doc
  }

  /** Ends everything: sockets, polls, timers, listeners; locks are released. */
  destroy () {
    if (this.destroyed) return
    this.waitingForToken?.(null)
    for (const doc of [...this.docs.values()]) doc.destroy()
    this.locks.destroy()
    this.group?.toLeader({ kind: 'bye' })
    this.destroyed = true
    this.hub?.destroy()
    this.group?.destroy()
    this.presence.destroy()
    this.badges.destroy()
    this.notifications.destroy()
    this.activity.clear()
    this.editing.clear()
    this.preferences.clear()
    this.tokens.destroy()
    for (const cleanup of this.cleanups) cleanup()
    this.subscriptions.clear()
    this.status = 'signed-out'
    this.clear()
  }
}
