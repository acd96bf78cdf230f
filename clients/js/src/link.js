// The dashboard connection of one browser (held by the leader tab): the `/ws` socket, and
// long-polling `GET /api/v1/events` while the socket keeps failing, each frame handed to
// `hub.frames` in the order the server sent it.

import { CHANNELS } from './channels.js'
import { backoff, pause, DEGRADED_AFTER_FAILURES, POLL_MAX_MS, POLL_MIN_MS } from './retry.js'
import { anySignal, timeoutSignal } from './signals.js'

// Long-poll rounds start at least this far apart, whatever the server answers.
const POLL_GAP_MS = 500
// A long poll waits this long on the server for an event.
const POLL_WAIT_SECS = 25
// A poller's presence is renewed this often (the server keeps it `--presence-poll-ttl-ms`).
const POLL_PRESENCE_MS = 30000
// A request that takes this much longer than the server's wait is given up.
const POLL_SLACK_MS = 10000
// WebSocket readyState values (the same for every implementation).
const OPEN = 1

export class DashboardLink {
  /**
   * @param {import('./tandem.js').Tandem} t
   * @param {{ frames(frames: object[]): void, opened(): void, status(status: string, detail?: object): void, presence(): object }} hub
   */
  constructor (t, hub) {
    this.t = t
    this.hub = hub
    this.failures = 0
    this.ws = null
    this.retry = null
    this.polling = false
    this.pollRun = 0
    this.pollAbort = null
    this.destroyed = false
    this.everConnected = false
    this.opening = false
    this.refusals = 0
  }

  /**
   * Opens the socket (one at a time: while one is open or being opened, this does nothing).
   * Signed out, it waits for a fresh token (`reconnectNow`).
   */
  async connect () {
    if (this.destroyed || this.ws || this.opening) return
    clearTimeout(this.retry)
    this.retry = null
    this.opening = true
    let token = null
    try {
      token = await this.t.tokens.current()
      // A token past its `exp` is refused before the upgrade, which a browser's WebSocket
      // only reports as a failed connection: a fresh one is asked for first.
      if (token && this.t.tokens.expired()) token = await this.t.tokenRefused(token) ? this.t.tokens.value : null
    } catch {
      token = null
    } finally {
      this.opening = false
    }
    if (this.destroyed || this.ws) return
    if (!token) {
      this.signedOut()
      return
    }
    let ws
    try {
      ws = new this.t.WebSocket(`${this.t.wsUrl}/ws?token=${encodeURIComponent(token)}`)
    } catch (err) {
      this.closed(null, token)
      return
    }
    this.ws = ws
    ws.onopen = () => {
      if (this.ws !== ws) return
      this.everConnected = true
      const since = this.t.resuming || this.t.lastId ? this.t.lastId : undefined
      this.sendNow({ action: 'subscribe', channels: CHANNELS, since })
      this.sendNow({ action: 'presence', ...this.hub.presence() })
      this.hub.opened()
    }
    ws.onmessage = (message) => {
      if (this.ws !== ws) return
      let frame
      try {
        frame = JSON.parse(typeof message.data === 'string' ? message.data : String(message.data))
      } catch {
        return
      }
      if (!frame || typeof frame !== 'object') return
      if (frame.type === 'subscribed') {
        // Connected once the server took the subscription (a socket it closes at once, 1013
        // say, is a failure like any other, and leads to polling when it keeps happening).
        this.failures = 0
        this.refusals = 0
        this.stopPolling()
        this.hub.status('connected')
      }
      this.hub.frames([frame])
    }
    ws.onerror = () => {}
    ws.onclose = (event) => {
      if (this.ws !== ws) return
      this.ws = null
      this.hub.closed()
      this.closed(event, token)
    }
  }

  /** No token the server takes: nothing is retried until a fresh one comes (`reconnectNow`). */
  signedOut () {
    clearTimeout(this.retry)
    this.retry = null
    this.stopPolling()
    this.hub.status('signed-out')
  }

  /** The socket closed (or could not open): retried after the backoff, polled meanwhile once it keeps failing. */
  async closed (event, token) {
    if (this.destroyed) return
    this.failures++
    if (event?.code === 4401) {
      // Expired: a fresh token is tried at once (then, if the server keeps refusing fresh
      // ones, after a growing delay); without one the client is signed out.
      this.refusals = (this.refusals ?? 0) + 1
      if (!(await this.t.tokenRefused(token))) {
        this.signedOut()
        return
      }
      if (this.destroyed || this.ws || this.opening) return
      const delay = this.refusals > 1 ? backoff(this.refusals) : 0
      this.retry = setTimeout(() => this.connect(), delay)
      this.hub.status(this.everConnected ? 'reconnecting' : 'connecting', { nextRetryAt: Date.now() + delay })
      return
    }
    const delay = backoff(this.failures)
    clearTimeout(this.retry)
    this.retry = setTimeout(() => this.connect(), delay)
    if (this.failures >= DEGRADED_AFTER_FAILURES) {
      if (!this.polling) this.poll()
      // Degraded once a poll answers; offline once one fails too.
      if (!this.pollWorks) this.hub.status(this.pollFailed ? 'offline' : (this.everConnected ? 'reconnecting' : 'connecting'), { nextRetryAt: Date.now() + delay })
    } else {
      this.hub.status(this.everConnected ? 'reconnecting' : 'connecting', { nextRetryAt: Date.now() + delay })
    }
  }

  /** Sends `frame` over the socket; `false` when there is none open. */
  send (frame) {
    return this.sendNow(frame)
  }

  sendNow (frame) {
    if (!this.ws || this.ws.readyState !== OPEN) return false
    this.ws.send(JSON.stringify(frame))
    return true
  }

  get connected () {
    return Boolean(this.ws && this.ws.readyState === OPEN)
  }

  /** The user's presence changed: over the socket, or posted while polling. */
  presenceChanged (presence, urgent) {
    if (this.sendNow({ action: 'presence', ...presence })) return
    if (this.polling && urgent) this.postPresence(presence).catch(() => {})
  }

  postPresence (presence) {
    return this.t.request('/api/v1/presence', { method: 'POST', json: presence })
  }

  /** The network (or a fresh token) is back: try now rather than at the end of the backoff. */
  reconnectNow () {
    if (this.destroyed || this.ws || this.opening) return
    this.connect()
  }

  /**
   * Long-polls while the WebSocket keeps failing; the socket's return ends it (and the request
   * it has out). One loop at a time: a newer one ends an older one.
   */
  async poll () {
    this.stopPolling()
    const run = this.pollRun
    const abort = new AbortController()
    this.pollAbort = abort
    this.polling = true
    this.pollWorks = false
    this.pollFailed = false
    const current = () => run === this.pollRun && !this.destroyed
    let lastPresence = 0
    let errors = 0
    while (current()) {
      const began = Date.now()
      try {
        if (Date.now() - lastPresence > POLL_PRESENCE_MS) {
          lastPresence = Date.now()
          const answer = await this.postPresence(this.hub.presence())
          if (!answer.ok && answer.status !== 429) throw new Error(`presence answered ${answer.status}`)
        }
        // Without a last id, from now on.
        const since = this.t.resuming || this.t.lastId ? `&since=${this.t.lastId}` : ''
        const response = await this.t.request(`/api/v1/events?timeout=${POLL_WAIT_SECS}${since}`, {
          signal: anySignal([abort.signal, timeoutSignal(POLL_WAIT_SECS * 1000 + POLL_SLACK_MS)])
        })
        if (!response.ok) throw new Error(`events answered ${response.status}`)
        const page = await response.json()
        if (!current()) return
        errors = 0
        this.pollFailed = false
        if (!this.pollWorks) {
          this.pollWorks = true
          this.hub.status('degraded')
        }
        // From here on, from where this answer ends (even at 0, in a workspace without events):
        // the cursor goes through the frames' path, so every tab takes it in order.
        const frames = [...page.events]
        frames.push(page.resync_required ? { type: 'resync_required', oldest: page.oldest, latest: page.last_id } : { type: 'cursor', last_id: page.last_id })
        this.hub.frames(frames)
        // Never a tight loop, whatever the answers.
        await pause(Math.max(0, POLL_GAP_MS - (Date.now() - began)), abort.signal)
      } catch (err) {
        if (!current()) return
        errors++
        const wait = Math.min(POLL_MAX_MS, POLL_MIN_MS * 2 ** errors)
        if (this.t.signedOut) {
          this.signedOut()
          return
        } else {
          this.pollWorks = false
          this.pollFailed = true
          this.hub.status('offline', { nextRetryAt: Date.now() + wait })
        }
        await pause(wait, abort.signal)
      }
    }
  }

  stopPolling () {
    this.pollRun++
    this.pollAbort?.abort()
    this.pollAbort = null
    this.polling = false
  }

  destroy () {
    this.destroyed = true
    clearTimeout(this.retry)
    this.stopPolling()
    const ws = this.ws
    this.ws = null
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null
      ws.onerror = () => {}
      try { ws.close(1000, 'client destroyed') } catch {}
    }
  }
}
