// AbortSignal.any where the platform has it (Chrome 116, Firefox 124, Safari 17.4, Node 20.3),
// a small equivalent where it does not.

/** A signal that aborts when any of `signals` does. */
export function anySignal (signals) {
  if (typeof AbortSignal.any === 'function') return AbortSignal.any(signals)
  const controller = new AbortController()
  for (const signal of signals) {
    if (signal.aborted) {
      controller.abort(signal.reason)
      break
    }
    signal.addEventListener('abort', () => controller.abort(signal.reason), { once: true })
  }
  return controller.signal
}

/** A signal that aborts after `ms` (AbortSignal.timeout, or a timer). */
export function timeoutSignal (ms) {
  if (typeof AbortSignal.timeout === 'function') return AbortSignal.timeout(ms)
  const controller = new AbortController()
  setTimeout(() => controller.abort(new Error('timed out')), ms)
  return controller.signal
}
