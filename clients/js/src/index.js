// @tandem/client: everything a web app needs from a Tandem server beyond plain y-websocket.

import { Tandem } from './tandem.js'

export { Tandem } from './tandem.js'
export { TandemDoc } from './doc.js'
export { LockHandle } from './locks.js'
export { CHANNELS, channelOf } from './channels.js'
export { backoff, BACKOFF_MAX_MS, DEGRADED_AFTER_FAILURES, POLL_MAX_MS, POLL_MIN_MS } from './retry.js'
export { claimsOf } from './token.js'

/**
 * Creates the app's Tandem client. `url`: the server (`location.origin` by default); `token`,
 * or `getToken` (called again when the server refuses the token, and before it expires).
 * @param {import('../types/index').TandemOptions} options
 */
export function createTandem (options) {
  return new Tandem(options)
}

/**
 * A development token for `name` from a server without authentication
 * (`POST /api/v1/dev/token`): `{ token, user, name, workspace }`.
 */
export async function devToken (url, name, { fetch = globalThis.fetch } = {}) {
  const response = await fetch(`${url.replace(/\/+$/, '')}/api/v1/dev/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name })
  })
  if (!response.ok) throw new Error(`could not get a development token: ${response.status}`)
  return response.json()
}
