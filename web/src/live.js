// The dashboard connection: the `/ws` socket, with a long-polling fallback while it keeps
// failing, each event handed on once and in order across both.

import { wsBase } from './util.js'
import { backoff, showConnection, DEGRADED_AFTER_FAILURES, POLL_MAX_MS, POLL_MIN_MS } from './status.js'
import { sessionExpired } from './session.js'

// Long-poll rounds start at least this far apart, whatever the server answers.
const POLL_GAP_MS = 500

export class Live {
  constructor (session) {
    this.session = session
    this.handlers = new Set()
    this.lastId = 0
    // Ids of events the page already shows from a snapshot: not handed on again.
    this.known = new Set()
    this.failures = 0
    this.presence = { status: 'online', current_page: location.pathname, workspace: location.pathname.startsWith('/queries/') ? 'queries' : 'dashboard' }
  }

  /** Goes live after the events up to `lastId`, which the page shows already (`known`). */
  resumeAfter (lastId, known) {
    this.lastId = lastId
    // From there even when it is 0 (a workspace without events yet).
    this.resuming = true
    this.known = new Set(known)
    this.connect()
  }

  on (handler) { this.handlers.add(handler) }

  /** Hands `event` to every handler; one that fails does not keep it from the others. */
  emit (event) {
    for (const handler of this.handlers) {
      try { handler(event) } catch (err) { console.error('tandem: an event handler failed', event.type, err) }
    }
  }

  connect () {
    showConnection('dashboard', this.failures >= DEGRADED_AFTER_FAILURES ? 'degraded' : (this.everConnected ? 'disconnected' : 'connecting'))
    const token = this.session.token
    const ws = new WebSocket(`${wsBase}/ws?token=${encodeURIComponent(token)}`)
    this.ws = ws
    ws.onopen = () => {
      this.failures = 0
      this.everConnected = true
      this.stopPolling()
      showConnection('dashboard', 'connected')
      showConnection('session', 'connected')
      this.subscribe()
      this.send({ action: 'presence', ...this.presence })
    }
    ws.onmessage = (message) => {
      let frame
      try { frame = JSON.parse(message.data) } catch { return }
      this.deliver(frame.type === 'batch' ? frame.events : [frame])
      if (frame.type === 'error' && frame.code === 'storage_unavailable') {
        // The server could not replay what we missed (and the channels are live without it):
        // the page reloads what it shows instead.
        this.emit({ type: 'resync_required' })
      }
    }
    ws.onclose = (event) => {
      if (this.ws !== ws) return
      // Expired: unless the page has a fresher token already, with which it just reconnects.
      if (event.code === 4401 && token === this.session.token) sessionExpired()
      this.failures++
      const degraded = this.failures >= DEGRADED_AFTER_FAILURES
      showConnection('dashboard', degraded ? 'degraded' : 'disconnected')
      if (degraded && !this.polling) this.poll()
      this.retry = setTimeout(() => this.connect(), backoff(this.failures))
    }
  }

  /** Every channel the page shows, from after the last event it has (all new ones at first). */
  subscribe () {
    this.send({ action: 'subscribe', channels: ['presence', 'queries', 'agents', 'approvals', 'chat_sessions', 'notifications', 'activity', 'system', 'workflows'], since: this.resuming || this.lastId ? this.lastId : undefined })
  }

  /**
   * Hands on frames from the socket or a poll, each event once: events come in id order, so one
   * at or below the last id is one the page has (the socket and a poll can overlap when the
   * page switches between them), and so is one a snapshot showed.
   */
  deliver (events) {
    for (const event of events) {
      if (typeof event.id === 'number') {
        if (event.id <= this.lastId) continue
        this.lastId = event.id
        if (this.known.has(event.id)) continue
      } else if (event.type === 'resync_required') {
        // What the page missed is gone from the log: it reloads what it shows (its handlers
        // do), and goes on from the latest event.
        if (typeof event.latest === 'number') this.lastId = event.latest
      }
      this.emit(event)
    }
  }

  send (frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame))
  }

  /** The network (or a fresh token) is back: try now rather than at the end of the backoff. */
  reconnectNow () {
    // Not live yet (the page is still loading), or connecting or connected already.
    if (!this.ws || this.ws.readyState <= WebSocket.OPEN) return
    clearTimeout(this.retry)
    this.connect()
  }

  setPresence (changes) {
    Object.assign(this.presence, changes)
    this.send({ action: 'presence', ...changes })
    // A poller's presence goes with its next round; a change of status goes at once.
    if (this.polling && changes.status) this.postPresence().catch(() => {})
  }

  postPresence () {
    return fetch('/api/v1/presence', { method: 'POST', headers: { ...this.auth(), 'content-type': 'application/json' }, body: JSON.stringify(this.presence) })
  }

  auth () { return { authorization: `Bearer ${this.session.token}` } }

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
    const current = () => run === this.pollRun
    const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
    let lastPresence = 0
    let errors = 0
    while (current()) {
      const began = Date.now()
      try {
        if (Date.now() - lastPresence > 30000) {
          lastPresence = Date.now()
          await this.postPresence()
        }
        // Without a last id, from now on.
        const since = this.resuming || this.lastId ? `&since=${this.lastId}` : ''
        const response = await fetch(`/api/v1/events?timeout=25${since}`, { headers: this.auth(), signal: abort.signal })
        if (response.status === 401) sessionExpired()
        if (!response.ok) throw new Error(String(response.status))
        const page = await response.json()
        if (!current()) return
        errors = 0
        // From here on, from where this answer ends (even at 0, in a workspace without events).
        this.resuming = true
        this.deliver(page.events)
        if (page.resync_required) this.deliver([{ type: 'resync_required', oldest: page.oldest, latest: page.last_id }])
        this.lastId = Math.max(this.lastId, page.last_id)
        // Never a tight loop, whatever the answers.
        await pause(Math.max(0, POLL_GAP_MS - (Date.now() - began)))
      } catch {
        if (!current()) return
        errors++
        await pause(Math.min(POLL_MAX_MS, POLL_MIN_MS * 2 ** errors))
      }
    }
  }

  stopPolling () {
    this.pollRun = (this.pollRun ?? 0) + 1
    this.pollAbort?.abort()
    this.polling = false
  }
}
