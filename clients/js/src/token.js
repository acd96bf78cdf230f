// The client's token: a fixed one, or one `getToken` hands out and is asked for again when the
// server refuses it (close 4401, HTTP 401) and shortly before it expires.

/** The claims of a JWT, unverified (the server verifies; the client only reads who it is). */
export function claimsOf (token) {
  try {
    const part = String(token).split('.')[1]
    return JSON.parse(atob(part.replace(/-/g, '+').replace(/_/g, '/'))) ?? {}
  } catch {
    return {}
  }
}

/** A renewal is asked for this long before the token's `exp`. */
const RENEW_BEFORE_EXPIRY_MS = 60000

export class TokenSource {
  /**
   * @param {{ token?: string, getToken?: () => string | Promise<string> }} options
   * @param {(token: string) => void} onChange called with every new token
   */
  constructor ({ token, getToken }, onChange) {
    if (!token && typeof getToken !== 'function') throw new TypeError('createTandem needs a token or getToken')
    this.value = token ?? null
    this.getToken = getToken
    this.onChange = onChange
    this.pending = null
    this.timer = null
    this.destroyed = false
  }

  /** The current token, asking `getToken` for the first one. */
  async current () {
    if (this.value) return this.value
    await this.refresh(null)
    return this.value
  }

  /** Takes `token` (an app that pushes fresh tokens). */
  set (token) {
    if (this.destroyed || !token || token === this.value) return
    this.value = token
    this.schedule()
    this.onChange(token)
  }

  /**
   * The server refused `rejected`: asks `getToken` for a fresh one (one call however many
   * connections ask at once). Resolves whether a different token is now at hand.
   */
  async refresh (rejected) {
    if (this.value && this.value !== rejected) return true
    if (typeof this.getToken !== 'function') return false
    this.pending ??= (async () => {
      try {
        const fresh = await this.getToken()
        if (typeof fresh === 'string' && fresh && fresh !== rejected) this.set(fresh)
      } catch (err) {
        console.warn('tandem: getToken failed', err)
      } finally {
        this.pending = null
      }
    })()
    await this.pending
    return Boolean(this.value) && this.value !== rejected
  }

  /** Who the token names: `{ user, name, workspace, exp }` from its claims. */
  claims () {
    const claims = claimsOf(this.value)
    return { user: claims.sub === undefined ? null : String(claims.sub), name: claims.name, workspace: claims.workspace, exp: claims.exp }
  }

  /** Whether the token's `exp` has passed (by this machine's clock). */
  expired () {
    const { exp } = this.claims()
    return typeof exp === 'number' && exp * 1000 <= Date.now()
  }

  /** With `getToken`, a fresh token is asked for a minute before this one's `exp`. */
  schedule () {
    clearTimeout(this.timer)
    this.timer = null
    const { exp } = this.claims()
    if (typeof this.getToken !== 'function' || typeof exp !== 'number') return
    const delay = Math.max(5000, exp * 1000 - Date.now() - RENEW_BEFORE_EXPIRY_MS)
    // Timers hold at most 2^31 − 1 ms; a token that lives longer is looked at again later.
    this.timer = setTimeout(() => {
      const rejected = this.value
      if (Date.now() >= exp * 1000 - RENEW_BEFORE_EXPIRY_MS) this.refresh(rejected)
      else this.schedule()
    }, Math.min(delay, 2 ** 31 - 1))
  }

  destroy () {
    this.destroyed = true
    clearTimeout(this.timer)
  }
}
