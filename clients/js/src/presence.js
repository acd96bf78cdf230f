// Who is online: the workspace's users (GET /api/v1/presence, then `presence_update` events),
// and this tab's own presence, with idle detection and a heartbeat while the user is at work.

import { Emitter } from './emitter.js'

/** The server's default `--presence-idle-ms`, until it says otherwise (`subscribed`). */
const IDLE_AFTER_MS = 5 * 60 * 1000
/** A user at work tells the server at most this often (more often when it idles users sooner). */
const HEARTBEAT_MS = 60000
/** A tab tells the leader it is still there this often. */
const KEEPALIVE_MS = 20000
const IDLE_CHECK_MS = 10000
const INPUT_EVENTS = ['keydown', 'pointerdown', 'pointermove', 'wheel', 'touchstart']
const FIELDS = ['status', 'current_page', 'workspace', 'name', 'avatar', 'color']

export class Presence extends Emitter {
  /** @param {import('./tandem.js').Tandem} t */
  constructor (t, options) {
    super()
    this.t = t
    /** user id → the user's presence */
    this.users = new Map()
    const page = globalThis.location?.pathname
    this.local = { status: 'online', ...(page ? { current_page: page } : {}), ...pick(options.presence ?? {}) }
    this.activeAt = Date.now()
    this.told = 0
    this.idle = false
    this.idleAfterMs = IDLE_AFTER_MS
    this.heartbeatMs = HEARTBEAT_MS
    // Idle detection needs a page to watch; a bot in Node is online while it runs.
    this.watching = options.idleDetection !== false && typeof document !== 'undefined' && typeof addEventListener === 'function'
    this.listeners = []
  }

  start () {
    this.keepalive()
    if (!this.watching) return
    const active = () => this.active()
    for (const type of INPUT_EVENTS) this.listen(globalThis, type, active, { passive: true })
    // A hidden tab shows its user as idle (unless another tab is in use).
    this.listen(document, 'visibilitychange', () => {
      if (!document.hidden) this.activeAt = Date.now()
      this.announce(true)
    })
    this.checkIdle()
  }

  /**
   * Tells the leader now and then that this tab is there; a client without a page to watch (a
   * bot, a backend) is at work while it runs, and beats often enough that the server never
   * counts it idle.
   */
  keepalive () {
    const every = this.watching ? KEEPALIVE_MS : Math.min(KEEPALIVE_MS, this.heartbeatMs)
    this.keepaliveTimer = setTimeout(() => {
      this.announce(!this.watching && this.local.status === 'online')
      this.keepalive()
    }, every)
  }

  listen (target, type, handler, options) {
    target.addEventListener(type, handler, options)
    this.listeners.push(() => target.removeEventListener(type, handler, options))
  }

  /** The user is idle after `idleAfterMs` without input (checked at a tenth of it, at most every 10 s). */
  checkIdle () {
    this.idleTimer = setTimeout(() => {
      if (!this.idle && Date.now() - this.activeAt > this.idleAfterMs) {
        this.idle = true
        this.announce(true)
        this.emit('idle')
      }
      this.checkIdle()
    }, Math.min(IDLE_CHECK_MS, Math.max(100, this.idleAfterMs / 10)))
  }

  /** Input: the user is at work (and says so now and then, so the server does not idle them). */
  active () {
    const now = Date.now()
    this.activeAt = now
    if (this.idle || now - this.told > this.heartbeatMs) {
      const was = this.idle
      this.idle = false
      this.announce(true)
      if (was) this.emit('active')
    }
  }

  /** The server counts users idle after `ms` without a frame. */
  idleAfter (ms) {
    this.idleAfterMs = ms
    this.heartbeatMs = Math.min(HEARTBEAT_MS, ms / 3)
    if (this.keepaliveTimer !== undefined) {
      clearTimeout(this.keepaliveTimer)
      this.keepalive()
    }
  }

  /** Changes this tab's presence: `status` (`online`, `idle`, `away`, …), `current_page`, `workspace`, `name`, `avatar`, `color`. */
  set (fields) {
    Object.assign(this.local, pick(fields))
    if (fields.status === 'online') this.activeAt = Date.now()
    this.announce(true)
  }

  /** This tab's presence as the server gets it: idle while hidden or without input. */
  effective () {
    const hidden = this.watching && document.hidden
    const status = this.local.status === 'online' && (this.idle || hidden) ? 'idle' : this.local.status
    return { ...this.local, status }
  }

  /** Tells the leader this tab's presence (`heartbeat`: the user is at work). */
  announce (heartbeat = false) {
    if (heartbeat) this.told = Date.now()
    this.t.group?.toLeader({ kind: 'tab', presence: this.effective(), activeAt: this.watching && document.hidden ? 0 : this.activeAt, heartbeat })
  }

  /** Every user seen: online and idle ones, and offline ones with `last_seen`. */
  list () {
    return [...this.users.values()]
  }

  get (userId) {
    return this.users.get(String(userId))
  }

  async load (replace = false) {
    const response = await this.t.request('/api/v1/presence?include_offline=true')
    if (!response.ok) throw new Error(`presence answered ${response.status}`)
    const body = await response.json()
    if (replace) this.users.clear()
    // A live update that came first is newer than the snapshot.
    for (const user of body.users ?? []) if (replace || !this.users.has(String(user.user_id))) this.users.set(String(user.user_id), user)
    this.emit('change', this.list(), null)
  }

  handle (event) {
    if (event.type !== 'presence_update') return
    const id = String(event.user_id)
    const user = { ...this.users.get(id), ...event }
    delete user.type
    delete user.id
    this.users.set(id, user)
    this.emit('change', this.list(), user)
  }

  destroy () {
    clearTimeout(this.keepaliveTimer)
    clearTimeout(this.idleTimer)
    for (const off of this.listeners) off()
    this.clear()
  }
}

function pick (fields) {
  const out = {}
  for (const key of FIELDS) if (fields[key] !== undefined) out[key] = fields[key]
  return out
}
