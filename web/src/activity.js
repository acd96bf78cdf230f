// Idle detection: a user without input for five minutes is idle; one at work says so now and
// then, so the server does not count them idle.

const IDLE_AFTER_MS = 5 * 60 * 1000
// A user at work tells the server at most this often (and more often when the server counts
// users idle sooner than three times this).
const ACTIVE_HEARTBEAT_MS = 60 * 1000

export function watchActivity (live) {
  let last = Date.now()
  let told = Date.now()
  let idle = false
  // The server says after how long it counts someone idle: a third of it, at most a minute.
  let heartbeat = ACTIVE_HEARTBEAT_MS
  live.on((event) => {
    if (event.type === 'subscribed' && event.idle_after_ms > 0) heartbeat = Math.min(ACTIVE_HEARTBEAT_MS, event.idle_after_ms / 3)
  })
  // The server counts a user idle after a while without a presence frame: someone who works
  // says so now and then (and at once when they come back from idle).
  const active = () => {
    last = Date.now()
    if (idle || last - told > heartbeat) {
      idle = false
      told = last
      live.setPresence({ status: 'online' })
    }
  }
  for (const type of ['keydown', 'pointerdown', 'pointermove', 'wheel']) addEventListener(type, active, { passive: true })
  setInterval(() => {
    if (!idle && Date.now() - last > IDLE_AFTER_MS) { idle = true; live.setPresence({ status: 'idle' }) }
  }, 10000)
}
