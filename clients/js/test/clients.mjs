// What the tests connect with: Tandem clients on Node's `ws`, and a WebSocket whose
// connections a test can refuse (as a proxy that blocks WebSockets does), to drive the
// long-poll and HTTP-sync fallbacks.

import WebSocket from 'ws'
import { createTandem } from '../src/index.js'

/** A WebSocket class whose new connections go to a closed port while `blocked`, and whose open ones `block()` cuts. */
export function blockable () {
  const open = new Set()
  const control = {
    blocked: false,
    block () {
      control.blocked = true
      for (const ws of open) ws.terminate()
    },
    unblock () { control.blocked = false }
  }
  control.WebSocket = class BlockableWebSocket extends WebSocket {
    constructor (url, protocols) {
      super(control.blocked ? 'ws://127.0.0.1:9/' : url, protocols)
      open.add(this)
      this.addEventListener('close', () => open.delete(this))
    }
  }
  return control
}

const clients = new Set()

/** A client of `server` for `sub` (a token of the server's, or a development token in open mode). */
export function client (server, sub, options = {}) {
  const token = server.secret ? server.token(sub) : undefined
  const t = createTandem({ url: server.url, token, WebSocket, ...options })
  clients.add(t)
  return t
}

/** Destroys every client the test made. */
export function destroyAll () {
  for (const t of clients) t.destroy()
  clients.clear()
}
