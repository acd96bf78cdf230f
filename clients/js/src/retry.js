// The rules every connection of the client retries and degrades by (the server's README,
// "The browser dashboard").

/** A WebSocket that failed this many times in a row gives way to HTTP polling until it is back. */
export const DEGRADED_AFTER_FAILURES = 3
/** Reconnect backoff: exponential from 100 ms (as y-websocket's), capped at this. */
export const BACKOFF_MAX_MS = 30000
/** Polling: every 2 s while anything changes, doubling to 30 s while nothing does. */
export const POLL_MIN_MS = 2000
export const POLL_MAX_MS = 30000

/**
 * The reconnect delay after `failures` failures in a row: 100 ms · 2^failures, capped at 30 s,
 * then a random 50–100 % of that, so clients cut off together do not come back together.
 * @param {number} failures
 * @param {() => number} [random]
 */
export function backoff (failures, random = Math.random) {
  return Math.min(BACKOFF_MAX_MS, 100 * 2 ** Math.min(Math.max(failures, 0), 9)) * (0.5 + random() / 2)
}

/** A promise that resolves after `ms`, or at once when `signal` aborts. */
export function pause (ms, signal) {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve()
    const timer = setTimeout(done, ms)
    function done () {
      clearTimeout(timer)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    signal?.addEventListener('abort', done, { once: true })
  })
}
