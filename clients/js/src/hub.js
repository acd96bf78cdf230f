// What the leader tab does for every tab of the browser: holds the dashboard connection,
// relays its frames and status, sends one presence for the user (the tabs' presences merged),
// and holds each lock any tab holds (released when the last tab lets go of it).

import { DashboardLink } from './link.js'

// A tab that has not said anything for this long is gone (closed without a word). Browsers run
// the timers of a tab hidden for a while about once a minute: well past that.
const TAB_TIMEOUT_MS = 180000
const SWEEP_MS = 15000

export class Hub {
  /** @param {import('./tandem.js').Tandem} t */
  constructor (t) {
    this.t = t
    /** tab id → { presence, activeAt, seen } */
    this.tabs = new Map()
    /** resource → tab ids holding it */
    this.holds = new Map()
    this.sent = ''
    this.current = { status: t.status, detail: t.statusDetail }
    this.link = new DashboardLink(t, this)
    this.sweeper = setInterval(() => this.sweep(), SWEEP_MS)
    // Every tab hears who leads now (and catches up from its last event).
    t.group.toAll({ kind: 'leader', tab: t.group.tab, lastId: t.lastId })
    this.link.connect()
  }

  // --- what the link reports

  frames (frames) {
    for (const frame of frames) {
      // A lock the server denied is nobody's here: no tab keeps asking for it, and a new
      // connection does not take it again.
      if (frame?.type === 'lock_denied') this.holds.delete(frame.resource)
    }
    this.t.group.toAll({ kind: 'frames', frames })
  }

  status (status, detail = {}) {
    this.current = { status, detail }
    this.t.group.toAll({ kind: 'status', status, detail })
  }

  opened () {
    // Locks are the connection's: a new one takes again what the tabs hold.
    for (const resource of this.holds.keys()) this.link.send({ action: 'lock', resource })
  }

  /** The socket closed: the server released its locks, which the tabs ask for again. */
  closed () {
    if (this.holds.size) this.t.group.toAll({ kind: 'locks-lost' })
  }

  /** The user's presence: the tabs' merged (online when any is; the page of the latest active). */
  presence () {
    let latest = null
    let online = false
    const fields = {}
    for (const tab of this.tabs.values()) {
      if (tab.presence.status === 'online') online = true
      if (!latest || tab.activeAt > latest.activeAt) latest = tab
      for (const key of ['name', 'avatar', 'color']) if (tab.presence[key] !== undefined) fields[key] = tab.presence[key]
    }
    const merged = { ...fields, ...(latest?.presence ?? {}) }
    // Online when any tab is; otherwise what the latest active tab says (idle, away, busy).
    merged.status = online ? 'online' : (latest?.presence.status ?? 'online')
    return merged
  }

  pushPresence (urgent) {
    const presence = this.presence()
    const text = JSON.stringify(presence)
    if (text === this.sent && !urgent) return
    const statusChanged = !this.sent || JSON.parse(this.sent).status !== presence.status
    this.sent = text
    this.link.presenceChanged(presence, urgent || statusChanged)
  }

  // --- what the tabs ask

  fromTab (message) {
    const { tab } = message
    switch (message.kind) {
      case 'tab': {
        const known = this.tabs.get(tab)
        this.tabs.set(tab, { presence: message.presence ?? {}, activeAt: message.activeAt ?? 0, seen: Date.now() })
        // A heartbeat of someone at work keeps the user from being counted idle.
        this.pushPresence(Boolean(message.heartbeat) || !known)
        break
      }
      case 'bye':
        this.forget(tab)
        break
      case 'lock': {
        const holders = this.holds.get(message.resource) ?? new Set()
        holders.add(tab)
        this.holds.set(message.resource, holders)
        this.link.send({ action: 'lock', resource: message.resource })
        break
      }
      case 'unlock':
        this.letGo(tab, message.resource)
        break
      case 'hello':
        this.t.group.toAll({ kind: 'status', status: this.current.status, detail: this.current.detail ?? {} })
        break
    }
  }

  letGo (tab, resource) {
    const holders = this.holds.get(resource)
    if (!holders?.delete(tab)) return
    if (holders.size) return
    this.holds.delete(resource)
    this.link.send({ action: 'unlock', resource })
  }

  forget (tab) {
    this.tabs.delete(tab)
    for (const resource of [...this.holds.keys()]) this.letGo(tab, resource)
    if (this.tabs.size) this.pushPresence(false)
  }

  sweep () {
    const now = Date.now()
    for (const [tab, state] of this.tabs) if (tab !== this.t.group.tab && now - state.seen > TAB_TIMEOUT_MS) this.forget(tab)
  }

  reconnectNow () { this.link.reconnectNow() }

  destroy () {
    clearInterval(this.sweeper)
    this.link.destroy()
  }
}
