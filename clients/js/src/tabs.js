// Tabs share one dashboard connection: the tabs of one browser (same server, same user) elect a
// leader with the Web Locks API; the leader holds the socket and relays what it receives to
// the others over a BroadcastChannel, and they send their presence and lock requests to it.
// When the leader tab goes, the browser grants the lock to another tab, which takes over from
// the last event it has.

/** A group of one: this client is its own leader (no Web Locks or BroadcastChannel, or sharing turned off). */
export class SoloGroup {
  constructor () {
    this.tab = randomId()
    this.leader = true
    this.onLeader = () => {}
    this.onToLeader = () => {}
    this.onToAll = () => {}
  }

  start () { this.onLeader() }
  toLeader (message) { this.onToLeader({ ...message, tab: this.tab }) }
  toAll (message) { this.onToAll(message) }
  destroy () {}
}

/** Whether this environment can share one connection between tabs. */
export const canShare = () => typeof BroadcastChannel === 'function' && typeof navigator !== 'undefined' && typeof navigator.locks?.request === 'function'

export class TabGroup {
  /** @param {string} key names the group: the server and the user */
  constructor (key) {
    this.key = key
    this.tab = randomId()
    this.leader = false
    this.onLeader = () => {}
    this.onToLeader = () => {}
    this.onToAll = () => {}
    this.channel = null
    this.release = null
    this.abort = new AbortController()
  }

  start () {
    this.channel = new BroadcastChannel(this.key)
    this.channel.onmessage = ({ data }) => {
      if (!data || typeof data !== 'object') return
      if (data.to === 'leader') {
        if (this.leader) this.onToLeader(data.message)
      } else if (data.to === 'all') {
        this.onToAll(data.message)
      }
    }
    // Held until this tab goes (or the client is destroyed): the browser then grants it to
    // the next tab that asked.
    navigator.locks.request(this.key, { signal: this.abort.signal }, () => {
      if (this.abort.signal.aborted) return undefined
      this.leader = true
      this.onLeader()
      return new Promise((resolve) => { this.release = resolve })
    }).catch(() => {})
  }

  /** To the leader (this tab, when it leads). */
  toLeader (message) {
    const stamped = { ...message, tab: this.tab }
    if (this.leader) this.onToLeader(stamped)
    else this.channel?.postMessage({ to: 'leader', message: stamped })
  }

  /** To every tab, this one included (only the leader sends these). */
  toAll (message) {
    this.channel?.postMessage({ to: 'all', message })
    this.onToAll(message)
  }

  destroy () {
    this.abort.abort()
    this.release?.()
    this.leader = false
    this.channel?.close()
    this.channel = null
  }
}

function randomId () {
  return globalThis.crypto?.randomUUID?.() ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`
}
