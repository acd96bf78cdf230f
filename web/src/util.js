// What every part of the page shares: the DOM helpers, the page's URL, and the colours users
// are drawn in.

export const params = new URLSearchParams(location.search)
export const wsBase = location.origin.replace(/^http/, 'ws')
const COLORS = ['#b91c1c', '#1d4ed8', '#047857', '#7c3aed', '#b45309', '#0e7490', '#be185d', '#4d7c0f']

export const $ = (selector) => document.querySelector(selector)
export const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props)
  for (const child of children) node.append(child)
  return node
}
/** `value` when it is one CSS colour (what users send is put into styles), else `fallback`. */
export const cssColor = (value, fallback) => typeof value === 'string' && value.length < 64 && CSS.supports('color', value) ? value : fallback
export const colorOf = (id) => COLORS[[...String(id)].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7) % COLORS.length]
export const initials = (name) => String(name || '?').split(/\s+/).map((w) => w[0]).join('').slice(0, 2).toUpperCase()
export const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : '')
/** `decodeURIComponent`, or `null` for text that is no valid encoding. */
export const safeDecode = (text) => { try { return decodeURIComponent(text) } catch { return null } }
