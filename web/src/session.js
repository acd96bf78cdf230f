// Signing in (a token from the URL, from the embedding app, or a development token for a
// name), and what happens when the server says the session's token expired.

import { $, el, params } from './util.js'

/** The claims of a JWT, unverified (the server verifies; the page only reads who it is). */
function claimsOf (token) {
  try {
    return JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')))
  } catch {
    return {}
  }
}

async function devToken (name) {
  const response = await fetch('/api/v1/dev/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name })
  })
  if (!response.ok) throw new Error(`could not sign in: ${response.status}`)
  const minted = await response.json()
  return { token: minted.token, user: minted.user, name: minted.name, workspace: minted.workspace, dev: true }
}

function askName () {
  return new Promise((resolve) => {
    const input = el('input', { type: 'text', id: 'name', required: true, autocomplete: 'nickname' })
    const form = el('form', { className: 'card signin' },
      el('h2', { textContent: 'Who are you?' }),
      el('label', { htmlFor: 'name', textContent: 'Your name' }), input, el('p'),
      el('button', { className: 'primary', type: 'submit', textContent: 'Sign in' }))
    form.addEventListener('submit', (e) => { e.preventDefault(); resolve(input.value.trim()) })
    $('#app').replaceChildren(el('section', { className: 'card' }, form))
    input.focus()
  })
}

const sessionOf = (token) => {
  const claims = claimsOf(token)
  return { token, user: String(claims.sub), name: claims.name || String(claims.sub), workspace: claims.workspace }
}

/** Asks the embedding app for a token (`tandem:ready`); it answers with `tandem:token`. */
function askForToken () {
  try {
    window.parent.postMessage({ type: 'tandem:ready' }, params.get('parent_origin') || '*')
  } catch (err) {
    console.error('tandem: ?parent_origin= is no origin', err)
  }
}

/** How long a framed page waits for its app's token before signing in by itself. */
const EMBED_WAIT_MS = 5000

/**
 * A page embedded in an app (an iframe; the server's `--frame-ancestors` says which apps may)
 * gets its token from that app: it posts `{type: 'tandem:ready'}` to its parent every second
 * (to `?parent_origin=` when given, and then takes messages from that origin only) and takes
 * `{type: 'tandem:token', token}` back, from the parent only. Resolves `null` when no token
 * came within 5 s (an app that does not hand one yet, or a plain frame); every token after the
 * first, or after that, goes to `onLater` (a refresh before expiry, or a late first token).
 */
function embeddedToken (onLater) {
  const parentOrigin = params.get('parent_origin')
  return new Promise((resolve) => {
    let first = true
    addEventListener('message', (event) => {
      if (event.source !== window.parent || (parentOrigin && event.origin !== parentOrigin)) return
      if (event.data?.type !== 'tandem:token' || typeof event.data.token !== 'string') return
      if (first) { first = false; resolve(event.data.token) } else onLater(event.data.token)
    })
    askForToken()
    const asking = setInterval(() => { if (first) askForToken(); else clearInterval(asking) }, 1000)
    setTimeout(() => { if (first) { first = false; clearInterval(asking); resolve(null) } }, EMBED_WAIT_MS)
  })
}

/**
 * The session to start with, or `null` when the page cannot sign in. A token the embedding app
 * hands over after the page stopped waiting still signs it in: `app.start(session)` then, unless
 * `app.started()` already.
 */
export async function signIn (app) {
  const token = params.get('token')
  if (token) return sessionOf(token)
  if (window.parent !== window) {
    let session = null
    // A token that comes after the page gave up waiting still signs it in.
    const handed = await embeddedToken((fresh) => {
      if (session) tokenRefreshed(session, fresh)
      else if (!app.started()) app.start(session = sessionOf(fresh))
    })
    if (handed) {
      session = sessionOf(handed)
      return session
    }
  }
  const wanted = params.get('name')
  const saved = JSON.parse(sessionStorage.getItem('tandem.session') || 'null')
  if (saved && (!wanted || saved.name === wanted)) return { ...saved, dev: true }
  let session
  try {
    session = await devToken(wanted || await askName())
  } catch (err) {
    // A token from the app came meanwhile: the page is signed in already.
    if (app.started()) return null
    // A server that checks tokens mints none: the page needs one from the URL or its app.
    $('#connection').hidden = true
    $('#app').replaceChildren(el('section', { className: 'card', role: 'alert' },
      el('h2', { textContent: 'Sign-in needed' }),
      el('p', { textContent: 'This server checks tokens: open the page with ?token=<your token>, or embed it in your app, which hands it a token.' }),
      el('p', { className: 'sub', textContent: String(err.message) })))
    return null
  }
  sessionStorage.setItem('tandem.session', JSON.stringify(session))
  return session
}


/** What goes on with a fresh token: the client library, which uses it from its next attempt. */
export const tokenListeners = new Set()

/** `session` has a fresh token: whatever waits for one goes on at once. */
function tokenRefreshed (session, fresh) {
  session.token = fresh
  for (const listener of [...tokenListeners]) listener(fresh)
}

/** How long an embedded page waits for its app to answer a request for a fresh token. */
const TOKEN_WAIT_MS = 10000

/**
 * The `getToken` of the client library for `session`: an embedded page asks its app (which
 * answers as to the first token); a page opened with `?token=` or a development token has no
 * other, and is signed out until the app hands one.
 */
export function tokenSource (session) {
  if (session.dev) {
    // A development token the server no longer takes (its data directory was wiped, say):
    // the page signs in again under the same name, as a new one.
    return async () => {
      const fresh = await devToken(session.name)
      Object.assign(session, fresh)
      sessionStorage.setItem('tandem.session', JSON.stringify(session))
      return fresh.token
    }
  }
  if (window.parent === window) return undefined
  return () => new Promise((resolve) => {
    const take = (fresh) => { clearTimeout(timer); tokenListeners.delete(take); resolve(fresh) }
    const timer = setTimeout(() => take(session.token), TOKEN_WAIT_MS)
    tokenListeners.add(take)
    askForToken()
  })
}
