// What every part of the page shares: the DOM helpers, the page's URL, and the colours users
// are drawn in.

export const params = new URLSearchParams(location.search)
export const wsBase = location.origin.replace(/^http/, 'ws')

export const $ = (selector) => document.querySelector(selector)
export const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props)
  for (const child of children) node.append(child)
  return node
}
/** `value` when it is one CSS colour (what users send is put into styles), else `fallback`. */
export const cssColor = (value, fallback) => typeof value === 'string' && value.length < 64 && CSS.supports('color', value) ? value : fallback
/**
 * A colour of its own for `id`: a hue from a hash of it (so 14 users are 14 colours, not an
 * 8-colour palette going round), dark enough for white initials, as `#rrggbb` (the editor
 * appends an alpha to it for selections).
 */
export function colorOf (id) {
  const hash = [...String(id)].reduce((h, c) => Math.imul(h ^ c.charCodeAt(0), 16777619) >>> 0, 2166136261)
  // The golden angle spreads neighbouring hashes around the wheel.
  const hue = (hash * 137.508) % 360
  // As light as the hue allows while white text on it keeps a contrast of 4.5:1 (WCAG AA).
  for (let l = 0.42; ; l -= 0.02) {
    const rgb = [0, 8, 4].map((n) => hslChannel(n, hue, 0.7, l))
    if (contrastWithWhite(rgb) >= 4.6 || l <= 0.2) return `#${rgb.map((c) => Math.round(c * 255).toString(16).padStart(2, '0')).join('')}`
  }
}

function hslChannel (n, hue, s, l) {
  const k = (n + hue / 30) % 12
  return l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(k - 3, 9 - k, 1))
}

/** WCAG's contrast ratio of white on the colour `rgb` (channels 0–1). */
function contrastWithWhite (rgb) {
  const [r, g, b] = rgb.map((c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4))
  return 1.05 / (0.2126 * r + 0.7152 * g + 0.0722 * b + 0.05)
}

/** "just now", "3 min ago", "2 h ago", or the date past a day. */
export function ago (iso) {
  if (!iso) return ''
  const seconds = (Date.now() - Date.parse(iso)) / 1000
  if (!(seconds >= 0)) return time(iso)
  if (seconds < 60) return 'just now'
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`
  return `on ${new Date(iso).toLocaleDateString()}`
}

/** An avatar picture users send is shown only from `https:` or as a data URL of an image. */
export const safeAvatar = (url) => typeof url === 'string' && url.length < 4096 && /^(https:\/\/|data:image\/(png|jpeg|gif|webp);)/i.test(url) ? url : null

/** What a user's `current_page` says: "on Query 7", "on the dashboard", or the page. */
export function pageLabel (page) {
  if (!page) return ''
  if (page === '/') return 'on the dashboard'
  const query = /^\/queries\/([^/]+)$/.exec(page)
  const id = query && safeDecode(query[1])
  return id ? `on Query ${id}` : `on ${page}`
}
export const initials = (name) => String(name || '?').split(/\s+/).map((w) => w[0]).join('').slice(0, 2).toUpperCase()
export const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : '')
/** `decodeURIComponent`, or `null` for text that is no valid encoding. */
export const safeDecode = (text) => { try { return decodeURIComponent(text) } catch { return null } }
