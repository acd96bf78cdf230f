// The connection indicator: the worst of the dashboard's and the open document's connection,
// as the client library reports them, with when the next attempt is due.

import { $ } from './util.js'

const LABELS = {
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Disconnected: reconnecting',
  degraded: 'Degraded: polling over HTTP',
  offline: 'Server unreachable: retrying',
  'signed-out': 'Signed out: the session expired'
}
const SEVERITY = ['connected', 'connecting', 'reconnecting', 'degraded', 'offline', 'signed-out']
const parts = new Map()
let ticker = null

/** The dashboard and the open document each report their connection; the page shows the worst. */
export function showConnection (part, state, detail = {}) {
  parts.set(part, { state, detail })
  render()
}

function render () {
  const [worst] = [...parts.values()].sort((a, b) => SEVERITY.indexOf(b.state) - SEVERITY.indexOf(a.state))
  if (!worst) return
  const node = $('#connection')
  node.className = `connection ${worst.state}`
  node.dataset.state = worst.state
  document.body.dataset.connection = worst.state
  const due = worst.detail?.nextRetryAt
  const seconds = due ? Math.ceil((due - Date.now()) / 1000) : 0
  // Edits kept on this device until the server has them, from any part that has some.
  const pending = [...parts.values()].reduce((n, part) => n + (part.detail?.pending ?? 0), 0)
  const saved = pending > 0 ? ` (${pending} edit${pending > 1 ? 's' : ''} saved on this device)` : ''
  node.querySelector('.label').textContent = (seconds > 0 && ['reconnecting', 'offline'].includes(worst.state)
    ? `${LABELS[worst.state]} in ${seconds} s`
    : `${LABELS[worst.state]}${['reconnecting', 'offline'].includes(worst.state) ? '…' : ''}`) + saved
  // The countdown ticks while a retry is due.
  clearTimeout(ticker)
  if (seconds > 0) ticker = setTimeout(render, 1000)
}
