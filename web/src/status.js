// The connection indicator (the worst of the dashboard's and the open document's connection),
// and the rules every connection of the page retries and degrades by.

import { $ } from './util.js'

// A WebSocket that failed this many times in a row gives way to HTTP polling until it is back.
export const DEGRADED_AFTER_FAILURES = 3
// Reconnect backoff: exponential from 100 ms (as y-websocket's), capped, each delay jittered.
export const BACKOFF_MAX_MS = 30000
// Polling: every 2 s while anything changes, doubling to 30 s while nothing does.
export const POLL_MIN_MS = 2000
export const POLL_MAX_MS = 30000

const LABELS = {
  connecting: 'Connecting…',
  connected: 'Connected',
  disconnected: 'Disconnected: reconnecting…',
  degraded: 'Degraded: polling over HTTP',
  expired: 'Signed out: the session expired'
}
const SEVERITY = ['connected', 'connecting', 'disconnected', 'degraded', 'expired']
const connectionParts = new Map()
/** The dashboard and the open document each report their connection; the page shows the worst. */
export function showConnection (part, state) {
  connectionParts.set(part, state)
  const worst = [...connectionParts.values()].reduce((a, b) => SEVERITY.indexOf(b) > SEVERITY.indexOf(a) ? b : a)
  const node = $('#connection')
  node.className = `connection ${worst}`
  node.querySelector('.label').textContent = LABELS[worst]
  node.dataset.state = worst
}

/**
 * The reconnect delay after `failures` failures in a row: 100 ms · 2^failures, capped at 30 s,
 * then a random 50–100% of that, so clients cut off together do not come back together.
 */
export const backoff = (failures) => Math.min(BACKOFF_MAX_MS, 100 * 2 ** Math.min(failures, 9)) * (0.5 + Math.random() / 2)
