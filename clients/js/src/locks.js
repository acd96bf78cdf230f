// Advisory locks (`lock` / `unlock` on the dashboard socket): a handle renews its lease at a
// third of its lifetime, asks again after a reconnect, and releases on `release()` or when the
// page goes.

import { Emitter } from './emitter.js'

/** Until the server says how long a lease lasts, a request is repeated this often. */
const RETRY_MS = 10000
/** `acquire` resolves after this long without an answer (the handle keeps asking). */
const ANSWER_TIMEOUT_MS = 10000

export class LockHandle extends Emitter {
  constructor (locks, resource) {
    super()
    this.locks = locks
    this.resource = resource
    /** @type {'pending' | 'held' | 'denied' | 'released'} */
    this.state = 'pending'
    this.holder = null
    this.expiresAt = null
    this.timer = null
    /** What waits for the next answer (every `acquire` before it). */
    this.waiters = []
  }

  get held () { return this.state === 'held' }

  /** Lets the lock go (others may take it at once). */
  release () { this.locks.release(this) }

  /** Asks again (after a denial). */
  retry () {
    if (this.state === 'released') return
    this.locks.ask(this)
  }

  change (state, fields = {}) {
    const was = this.state
    Object.assign(this, fields)
    this.state = state
    if (state !== 'pending') for (const waiter of this.waiters.splice(0)) waiter()
    if (was !== state || state === 'denied') this.emit('change', this)
    if (was === 'held' && state === 'denied') this.emit('lost', this)
  }
}

export class Locks {
  /** @param {import('./tandem.js').Tandem} t */
  constructor (t) {
    this.t = t
    /** resource → handle */
    this.handles = new Map()
    this.onPageHide = () => { for (const handle of [...this.handles.values()]) handle.release() }
    if (typeof addEventListener === 'function') addEventListener('pagehide', this.onPageHide)
  }

  /**
   * Asks for `resource`; resolves to its handle once the server answered (`held`, or `denied`
   * with the `holder`), or after `timeoutMs` still `pending` (it keeps asking: the socket may be
   * down). One handle per resource: asking again returns it.
   */
  acquire (resource, { timeoutMs = ANSWER_TIMEOUT_MS } = {}) {
    if (typeof resource !== 'string' || !resource) throw new TypeError('a lock needs a resource name')
    let handle = this.handles.get(resource)
    if (!handle) {
      handle = new LockHandle(this, resource)
      this.handles.set(resource, handle)
    }
    const answered = new Promise((resolve) => {
      const done = () => { clearTimeout(timer); resolve() }
      const timer = setTimeout(() => {
        handle.waiters = handle.waiters.filter((waiter) => waiter !== done)
        resolve()
      }, timeoutMs)
      handle.waiters.push(done)
    })
    this.ask(handle)
    return answered.then(() => handle)
  }

  ask (handle, delay = RETRY_MS) {
    clearTimeout(handle.timer)
    this.t.group?.toLeader({ kind: 'lock', resource: handle.resource })
    // Asked again after a while even without an answer.
    handle.timer = setTimeout(() => this.ask(handle), delay)
  }

  release (handle) {
    if (handle.state === 'released') return
    clearTimeout(handle.timer)
    if (this.handles.get(handle.resource) === handle) this.handles.delete(handle.resource)
    // The leader lets go of it on the server once no tab holds it (and not at all when the
    // server denied it).
    this.t.group?.toLeader({ kind: 'unlock', resource: handle.resource })
    handle.change('released')
  }

  /**
   * The dashboard connection closed, and the server released its locks: a held one is
   * pending again (asked for until the connection is back, then held or denied).
   */
  connectionLost () {
    for (const handle of this.handles.values()) {
      if (handle.state !== 'held') continue
      handle.change('pending')
      this.ask(handle)
    }
  }

  /** A new leader (or connection): every lock held or wanted is asked for again. */
  resend () {
    for (const handle of this.handles.values()) if (handle.state !== 'denied') this.ask(handle)
  }

  handle (event) {
    const handle = this.handles.get(event.resource)
    if (!handle) return
    const me = this.t.user
    if (event.type === 'lock_acquired') {
      // The answer to this connection's request has no id; the event everyone gets has one
      // (and may be the same user's on another device, whose connection holds it, not ours).
      if (typeof event.id !== 'number') {
        const lifetime = Number(event.expires_in_ms) > 0 ? Number(event.expires_in_ms) : 3 * RETRY_MS
        // Renewed at a third of its lifetime, so a late renewal still comes in time.
        clearTimeout(handle.timer)
        handle.timer = setTimeout(() => this.ask(handle), lifetime / 3)
        handle.change('held', { holder: { user_id: event.user_id, name: event.name }, expiresAt: event.expires_at ?? null })
      } else if (String(event.user_id) !== me) {
        clearTimeout(handle.timer)
        handle.change('denied', { holder: { user_id: event.user_id, name: event.name }, expiresAt: event.expires_at ?? null })
      }
    } else if (event.type === 'lock_denied') {
      clearTimeout(handle.timer)
      handle.change('denied', { holder: event.holder ?? null, expiresAt: event.expires_at ?? null })
    } else if (event.type === 'lock_released' && handle.state === 'denied') {
      handle.holder = null
      handle.emit('available', handle)
    } else if (event.type === 'lock_released' && handle.state === 'held' && String(event.user_id) === me && event.reason === 'expired') {
      // It lapsed (the socket was down too long): asked for again at once.
      this.ask(handle)
    }
  }

  destroy () {
    if (typeof removeEventListener === 'function') removeEventListener('pagehide', this.onPageHide)
    for (const handle of [...this.handles.values()]) {
      handle.release()
      clearTimeout(handle.timer)
      for (const waiter of handle.waiters.splice(0)) waiter()
    }
  }
}
