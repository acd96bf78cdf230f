// What the dashboard lists: notifications (history and live, with read state), the activity
// feed (history and live), chat badges, and who is in which document.

import { Emitter } from './emitter.js'
import { channelOf, isNotification } from './channels.js'

/** A long-lived client keeps this many entries of a feed. */
const MAX_KEPT = 200

/** A list of events: the latest from the server's history, then live ones, oldest first, each once. */
export class Feed extends Emitter {
  /**
   * @param {import('./tandem.js').Tandem} t
   * @param {{ path: string, accepts: (event: object) => boolean, limit?: number }} options
   */
  constructor (t, { path, accepts, limit = 30 }) {
    super()
    this.t = t
    this.path = path
    this.accepts = accepts
    this.limit = limit
    /** @type {object[]} */
    this.items = []
    this.ids = new Set()
  }

  /** The latest events (replacing what is listed with `replace`); resolves to the page. */
  async load (replace = false) {
    const response = await this.t.request(`${this.path}?limit=${this.limit}`)
    if (!response.ok) throw new Error(`${this.path} answered ${response.status}`)
    const page = await response.json()
    if (replace) {
      this.items = []
      this.ids.clear()
    }
    for (const event of page.events ?? []) this.add(event)
    this.emit('change', this.items, null)
    return page
  }

  add (event) {
    if (this.ids.has(event.id)) return false
    this.ids.add(event.id)
    // In id order: history and live events may come in either order.
    let at = this.items.length
    while (at > 0 && this.items[at - 1].id > event.id) at--
    this.items.splice(at, 0, event)
    while (this.items.length > MAX_KEPT) this.ids.delete(this.items.shift().id)
    return true
  }

  handle (event) {
    if (!this.accepts(event) || !this.add(event)) return
    this.emit('event', event)
    this.emit('change', this.items, event)
  }
}

/** Notifications: a feed with read state, remembered in this browser per user (and shared by its tabs). */
export class Notifications extends Feed {
  constructor (t, options) {
    super(t, { path: '/api/v1/notifications', accepts: isNotification, ...options })
    this.lastRead = 0
    this.storage = storage()
    this.onStorage = (event) => {
      if (event.key !== this.readKey()) return
      this.lastRead = Number(event.newValue) || 0
      this.emit('change', this.items, null)
    }
    if (this.storage && typeof addEventListener === 'function') addEventListener('storage', this.onStorage)
  }

  readKey () { return `tandem.read.${this.t.workspace ?? ''}.${this.t.user ?? ''}` }

  /** Reads the remembered read mark (once the user is known). */
  restore () {
    this.lastRead = Number(this.storage?.getItem(this.readKey()) || 0)
  }

  /** How many listed notifications came after the last `markRead`. */
  get unread () {
    return this.items.filter((event) => event.id > this.lastRead).length
  }

  isUnread (event) { return event.id > this.lastRead }

  /** Marks everything up to `id` (the newest by default) read, in every tab of this browser. */
  markRead (id = this.items.at(-1)?.id ?? 0) {
    if (id <= this.lastRead) return
    this.lastRead = id
    try { this.storage?.setItem(this.readKey(), String(id)) } catch {}
    this.emit('change', this.items, null)
  }

  destroy () {
    if (this.storage && typeof removeEventListener === 'function') removeEventListener('storage', this.onStorage)
    this.clear()
  }
}

export const activityFeed = (t, options) => new Feed(t, { path: '/api/v1/activity', accepts: (event) => typeof event.id === 'number' && channelOf(event.type) === 'activity', ...options })

/** Unread chat messages per session (`chat_badges`), marked read over HTTP (any tab, any mode). */
export class Badges extends Emitter {
  constructor (t) {
    super()
    this.t = t
    /** session id → unread count */
    this.unread = {}
    this.total = 0
    this.reload = null
  }

  async load () {
    const response = await this.t.request('/api/v1/badges')
    if (!response.ok) throw new Error(`badges answered ${response.status}`)
    this.take(await response.json())
  }

  take (frame) {
    this.unread = frame.unread && typeof frame.unread === 'object' ? { ...frame.unread } : {}
    this.total = Number(frame.total) || Object.values(this.unread).reduce((a, b) => a + b, 0)
    this.emit('change', this.unread, this.total)
  }

  handle (event) {
    if (event.type === 'chat_badges') this.take(event)
    else if (event.type === 'new_chat_message' && this.t.status !== 'connected') {
      // Only the socket pushes badges: a poller asks after a message (once for a burst).
      clearTimeout(this.reload)
      this.reload = setTimeout(() => this.load().catch(() => {}), 250)
    }
  }

  /** Marks chat session `sessionId` read; its badge clears here and in the user's other tabs and devices. */
  async markRead (sessionId) {
    const response = await this.t.request('/api/v1/badges/read', { method: 'POST', json: { session_id: sessionId } })
    if (!response.ok) throw new Error(`badges/read answered ${response.status}`)
    this.take(await response.json())
  }

  destroy () {
    clearTimeout(this.reload)
    this.clear()
  }
}

/** Who is in which document (`GET /api/v1/editing`, then `editing` events). */
export class Editing extends Emitter {
  constructor (t) {
    super()
    this.t = t
    /** document → users `{user_id, name, active}` */
    this.documents = new Map()
    this.seen = new Set()
  }

  async load (replace = false) {
    const response = await this.t.request('/api/v1/editing')
    if (!response.ok) throw new Error(`editing answered ${response.status}`)
    const body = await response.json()
    if (replace) {
      this.documents.clear()
      this.seen.clear()
    }
    // A live event that came first is newer than the snapshot.
    for (const entry of body.documents ?? []) {
      if (!this.seen.has(entry.document) && entry.users?.length) this.documents.set(entry.document, entry)
    }
    this.emit('change', null, null)
  }

  handle (event) {
    if (event.type !== 'editing' || typeof event.document !== 'string') return
    this.seen.add(event.document)
    if (event.users?.length) this.documents.set(event.document, { document: event.document, query_id: event.query_id, users: event.users })
    else this.documents.delete(event.document)
    this.emit('change', event.document, event.users ?? [])
  }

  /** The users in `document` now. */
  usersOf (document) {
    return this.documents.get(document)?.users ?? []
  }

  list () {
    return [...this.documents.values()]
  }
}

function storage () {
  try {
    return globalThis.localStorage ?? null
  } catch {
    return null
  }
}

/** Which event types are pushed to the user in real time (`GET`/`PUT /api/v1/preferences`). */
export class Preferences extends Emitter {
  constructor (t) {
    super()
    this.t = t
    /** event type → pushed in real time */
    this.realtime = {}
  }

  /** The user's preferences, from the server. */
  async load () {
    const response = await this.t.request('/api/v1/preferences')
    if (!response.ok) throw new Error(`preferences answered ${response.status}`)
    this.take(await response.json())
    return this.realtime
  }

  /** Changes the types named (`{ agent_executed: false }`); resolves to all of them once stored. */
  async set (realtime) {
    const response = await this.t.request('/api/v1/preferences', { method: 'PUT', json: { realtime } })
    if (!response.ok) throw new Error(`preferences answered ${response.status}`)
    this.take(await response.json())
    return this.realtime
  }

  take (body) {
    this.realtime = body?.realtime && typeof body.realtime === 'object' ? { ...body.realtime } : {}
    this.emit('change', this.realtime)
  }
}

/** Decisions on approval requests (`POST /api/v1/approvals/{id}/decision`). */
export class Approvals {
  constructor (t) {
    this.t = t
  }

  /**
   * Decides on approval `approvalId` (`approved` or `denied`, with an optional comment): an
   * `approval_decided` event every subscriber of `approvals` gets. Resolves to its id.
   */
  async decide (approvalId, decision, { comment } = {}) {
    const body = comment ? { decision, comment } : { decision }
    const response = await this.t.request(`/api/v1/approvals/${encodeURIComponent(approvalId)}/decision`, { method: 'POST', json: body })
    if (!response.ok) {
      const refusal = await response.json().catch(() => ({}))
      throw new Error(refusal.message ?? `the decision was refused (${response.status})`)
    }
    return (await response.json()).id
  }
}
