// Two browser contexts as two users: both open the same query; typing in one shows in the
// other with the typist's cursor and name; the title one of them edits is locked for the other,
// holder shown, and free again once they leave it; a query_completed published over HTTP
// updates the result panel in both; both appear in the online widget and in the query's entry
// of a third user's dashboard, whose chat badge clears once the session is viewed; a tab sent
// to the background shows its user idle and sends its awareness updates coalesced; every page
// passes an accessibility check (labelled controls, text contrast of at least 4.5:1).
// Screenshots of the windows go to the artifacts directory.
//
// usage: node collaborate.mjs <server base URL> <artifacts dir>
// Prints one JSON line with what it saw; exits 0 only when everything held.
import { TIMEOUT, launch, newPage } from './browser.mjs'
import { mkdirSync } from 'node:fs'

const [base, artifacts, lockTtl] = process.argv.slice(2)
// The server's lock lifetime, short here so that a renewal is needed within the test.
const LOCK_TTL_MS = Number(lockTtl)
mkdirSync(artifacts, { recursive: true })
const browser = await launch()
const errors = []
const open = async (name, path) => {
  const page = await newPage(browser, name, errors)
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name} console: ${m.text()}`) })
  await page.goto(`${base}${path}?name=${name}`)
  await page.waitForSelector('#connection[data-state=connected]', { timeout: TIMEOUT })
  return page
}
const textOf = (page, selector) => page.$eval(selector, (node) => node.innerText)

/**
 * What fails a basic accessibility check on `page`: form controls and buttons without an
 * accessible name, and visible text whose contrast with its background is under WCAG AA's 4.5:1.
 */
const accessibilityProblems = (page) => page.evaluate(() => {
  const problems = []
  const rgb = (color) => (color.match(/[\d.]+/g) || []).map(Number)
  const luminance = ([r, g, b]) => {
    const lin = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4 }
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
  }
  const background = (node) => {
    for (; node; node = node.parentElement) {
      const [r, g, b, a = 1] = rgb(getComputedStyle(node).backgroundColor)
      if (a > 0) return [r, g, b]
    }
    return [255, 255, 255]
  }
  for (const node of document.querySelectorAll('input, button, select, textarea, [contenteditable=true]')) {
    const named = node.labels?.length || node.getAttribute('aria-label') || node.getAttribute('aria-labelledby') || node.textContent.trim()
    if (!named) problems.push(`unlabelled ${node.tagName.toLowerCase()}#${node.id}`)
  }
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT)
  for (let text = walker.nextNode(); text; text = walker.nextNode()) {
    const node = text.parentElement
    // Zero-width characters (the word joiner beside a remote caret) are no text to read.
    if (!text.textContent.replace(/[\u200b-\u200d\u2060\ufeff]/g, '').trim() || !node.checkVisibility()) continue
    const style = getComputedStyle(node)
    const a = luminance(rgb(style.color))
    const b = luminance(background(node))
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)
    if (ratio < 4.5) problems.push(`contrast ${ratio.toFixed(2)} of "${text.textContent.trim().slice(0, 30)}"`)
  }
  return [...new Set(problems)]
})

let step = 'start'
try {
  const ada = await open('Ada', '/queries/7')
  const bob = await open('Bob', '/queries/7')
  await ada.waitForSelector('.cm-content', { timeout: TIMEOUT })
  await ada.click('.cm-content')
  await ada.keyboard.type('SELECT count(*) FROM orders')
  await bob.waitForFunction(() => (document.querySelector('.cm-content')?.innerText ?? '').includes('SELECT count(*) FROM orders'), null, { timeout: TIMEOUT })
  // Ada's cursor, with her name, in Bob's editor; the banner says she is there.
  await bob.waitForFunction(() => [...document.querySelectorAll('.cm-ySelectionInfo')].some((n) => n.textContent === 'Ada'), null, { timeout: TIMEOUT })
  await bob.waitForFunction(() => (document.querySelector('#editing-banner')?.textContent ?? '').includes('Ada'), null, { timeout: TIMEOUT })
  // Typing, she is editing (the server's `editing` event says she is active); Bob, who has
  // not moved his cursor for a while (the test's server: 2 s), is viewing on her side.
  await ada.keyboard.type(' ')
  await bob.waitForFunction(() => (document.querySelector('#editing-banner')?.textContent ?? '').includes('Ada is editing'), null, { timeout: TIMEOUT })
  await ada.waitForFunction(() => (document.querySelector('#editing-banner')?.textContent ?? '').includes('Bob is viewing'), null, { timeout: TIMEOUT })
  await bob.click('.cm-content')
  await bob.keyboard.press('End')
  await bob.keyboard.type(' WHERE paid')
  await ada.waitForFunction(() => (document.querySelector('.cm-content')?.innerText ?? '').includes('WHERE paid'), null, { timeout: TIMEOUT })
  await ada.waitForFunction(() => [...document.querySelectorAll('.cm-ySelectionInfo')].some((n) => n.textContent === 'Bob'), null, { timeout: TIMEOUT })

  // Ada edits the title: Bob's is locked, saying who holds it, and follows her typing; once she
  // leaves it, it is free again.
  await ada.click('#title')
  await bob.waitForFunction(() => document.querySelector('#title')?.disabled && (document.querySelector('#title-lock')?.textContent ?? '').includes('Ada'), null, { timeout: TIMEOUT })
  await ada.keyboard.type('Paid orders')
  await bob.waitForFunction(() => document.querySelector('#title')?.value === 'Paid orders', null, { timeout: TIMEOUT })
  const titleLock = await textOf(bob, '#title-lock')
  step = 'title lock renewal'
  // She stays in it past the lock's lifetime: her page renews it, and Bob's stays locked.
  await new Promise((resolve) => setTimeout(resolve, 2 * LOCK_TTL_MS))
  if (!await bob.$eval('#title', (node) => node.disabled)) throw new Error('the title lock lapsed while Ada was in the field')
  await ada.click('.cm-content')
  await bob.waitForFunction(() => document.querySelector('#title')?.disabled === false && (document.querySelector('#title-lock')?.textContent ?? '') === '', null, { timeout: TIMEOUT })

  // A result arrives: both result panels show it.
  const published = await fetch(`${base}/api/v1/events?workspace=default`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'query_completed', query_id: 7, result_count: 100, execution_time: 2.5 })
  })
  if (published.status !== 201) throw new Error(`publish answered ${published.status}`)
  for (const page of [ada, bob]) {
    await page.waitForFunction(() => document.querySelector('#result-status')?.textContent === 'completed', null, { timeout: TIMEOUT })
  }
  const rows = await textOf(bob, '#result-count')
  // A failure shows its error, until the next run completes.
  const publish = async (event) => {
    const answer = await fetch(`${base}/api/v1/events?workspace=default`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(event)
    })
    if (answer.status !== 201) throw new Error(`publish answered ${answer.status}`)
  }
  await publish({ type: 'query_failed', query_id: 7, error: 'relation "orders" does not exist' })
  await bob.waitForFunction(() => document.querySelector('#result-error')?.textContent === 'relation "orders" does not exist', null, { timeout: TIMEOUT })
  await publish({ type: 'query_completed', query_id: 7, result_count: 100, execution_time: 2.5 })
  await bob.waitForFunction(() => document.querySelector('#result-status')?.textContent === 'completed' && !document.querySelector('#result-error'), null, { timeout: TIMEOUT })

  // Both in the online widget of the dashboard, and in the query's entry.
  const carol = await open('Carol', '/')
  await carol.waitForFunction(() => ['Ada', 'Bob'].every((n) => (document.querySelector('#online-users')?.innerText ?? '').includes(n)), null, { timeout: TIMEOUT })
  await carol.waitForFunction(() => /Query 7[^·]*·\s*(Ada, Bob|Bob, Ada)/.test((document.querySelector('#queries')?.innerText ?? '')), null, { timeout: TIMEOUT })
  // The query's title, read from its document, in the list and in where Ada is.
  await carol.waitForFunction(() => (document.querySelector('#queries')?.innerText ?? '').includes('“Paid orders”') && (document.querySelector('#online-users')?.innerText ?? '').includes('on “Paid orders”'), null, { timeout: TIMEOUT })
  const online = await textOf(carol, '#online-users')
  // The result that came before she opened the page is in her notifications all the same.
  await carol.waitForFunction(() => (document.querySelector('#unread')?.innerText ?? '').includes('Query 7 completed: 100 rows'), null, { timeout: TIMEOUT })

  // Activity shows in the feed as it happens.
  const ran = await fetch(`${base}/api/v1/events?workspace=default`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'query_executed', user_id: 'ada', query_id: 7 })
  })
  if (ran.status !== 201) throw new Error(`publish answered ${ran.status}`)
  await carol.waitForFunction(() => (document.querySelector('#activity')?.innerText ?? '').includes('Ada ran Query 7'), null, { timeout: TIMEOUT })

  step = 'chat badge'
  // A chat message raises Carol's badge; viewing the session clears it.
  const chat = await fetch(`${base}/api/v1/events?workspace=default`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'new_chat_message', session_id: 31, message: 'Is the report ready?', sender: 'visitor' })
  })
  if (chat.status !== 201) throw new Error(`publish answered ${chat.status}`)
  await carol.waitForFunction(() => document.querySelector('#chat-badges .badge')?.textContent === '1', null, { timeout: TIMEOUT })
  await carol.click('#chat-badges button')
  await carol.waitForFunction(() => (document.querySelector('#chat-badges')?.innerText ?? '').includes('Chat 31') && !document.querySelector('#chat-badges .badge'), null, { timeout: TIMEOUT })
  // Her notifications are unread until she marks them read.
  const unreadBefore = Number(await carol.$eval('#unread-count', (node) => node.textContent))
  if (!(unreadBefore >= 3)) throw new Error(`${unreadBefore} unread notifications`)
  await carol.click('text=Mark all read')
  await carol.waitForFunction(() => document.querySelector('#unread-count')?.hidden === true && !document.querySelector('#unread li.unread'), null, { timeout: TIMEOUT })
  const chatView = await textOf(carol, '#chat-session')
  if (!chatView.includes('Is the report ready?')) throw new Error(`the chat view shows ${JSON.stringify(chatView)}`)
  step = 'open chat'
  // The open session shows the next message as it comes, and it stays read.
  await fetch(`${base}/api/v1/events?workspace=default`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'new_chat_message', session_id: 31, message: 'Any news?', sender: 'visitor' })
  })
  await carol.waitForFunction(() => (document.querySelector('#chat-session')?.innerText ?? '').includes('Any news?'), null, { timeout: TIMEOUT })
  await carol.waitForFunction(() => !document.querySelector('#chat-badges .badge'), null, { timeout: TIMEOUT })

  step = 'hidden tab'
  // Ada's tab goes to the background: the dashboard shows her idle, and her awareness updates
  // reach Bob coalesced instead of one by one (ten changes visible: ten updates; hidden: one).
  await bob.evaluate(() => {
    const { provider } = window.tandem
    window.probes = []
    provider.awareness.on('change', ({ updated }) => {
      for (const id of updated) {
        const probe = provider.awareness.getStates().get(id)?.probe
        if (probe !== undefined) window.probes.push(probe)
      }
    })
  })
  const probe = (from) => ada.evaluate(async (from) => {
    for (let i = from; i < from + 10; i++) {
      window.tandem.provider.awareness.setLocalStateField('probe', i)
      await new Promise((resolve) => setTimeout(resolve, 30))
    }
  }, from)
  await probe(0)
  await bob.waitForFunction(() => window.probes.includes(9), null, { timeout: TIMEOUT })
  await ada.evaluate(() => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => true })
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' })
    document.dispatchEvent(new Event('visibilitychange'))
  })
  await carol.waitForFunction(() => /Ada\s*idle/.test((document.querySelector('#online-users')?.innerText ?? '')), null, { timeout: TIMEOUT })
  await probe(100)
  await bob.waitForFunction(() => window.probes.includes(109), null, { timeout: TIMEOUT })
  const probes = await bob.evaluate(() => window.probes)
  const awarenessUpdates = { visible: probes.filter((p) => p < 100).length, hidden: probes.filter((p) => p >= 100).length }

  const accessibility = {}
  for (const [name, page] of [['ada', ada], ['bob', bob], ['carol', carol]]) {
    const problems = await accessibilityProblems(page)
    if (problems.length) accessibility[name] = problems
  }

  // Ada's name tag shows on her cursor in Bob's window without pointing at it.
  await bob.waitForFunction(() => getComputedStyle(document.querySelector('.cm-ySelectionInfo')).opacity === '1', null, { timeout: TIMEOUT })
  await ada.screenshot({ path: `${artifacts}/ada.png` })
  await bob.screenshot({ path: `${artifacts}/bob.png` })
  await carol.screenshot({ path: `${artifacts}/dashboard.png` })

  step = 'colours'
  // Colours users send are checked before they go into styles: a style smuggled in as one
  // changes neither Bob's caret in Ada's editor nor his avatar on Carol's dashboard.
  const smuggled = 'red;position:fixed;inset:0;z-index:9'
  const bobsAvatar = () => carol.evaluate(() => {
    const node = [...document.querySelectorAll('#online-users button')].find((b) => b.innerText.includes('Bob'))?.querySelector('.avatar')
    return node && { style: node.getAttribute('style') ?? '', color: node.style.backgroundColor }
  })
  await bob.evaluate(() => window.tandem.client.presence.set({ color: 'rgb(1, 2, 3)' }))
  await carol.waitForFunction(() => [...document.querySelectorAll('#online-users .avatar')].some((a) => a.style.backgroundColor === 'rgb(1, 2, 3)'), null, { timeout: TIMEOUT })
  await bob.evaluate((color) => {
    window.tandem.provider.awareness.setLocalStateField('user', { name: 'Bob', color, colorLight: color })
    window.tandem.provider.awareness.setLocalStateField('probe', 'colour')
    window.tandem.client.presence.set({ color })
  }, smuggled)
  await ada.waitForFunction(() => [...window.tandem.provider.awareness.getStates().values()].some((s) => s.probe === 'colour'), null, { timeout: TIMEOUT })
  const carets = await ada.$$eval('.cm-ySelectionCaret, .cm-ySelection', (nodes) => nodes.map((n) => n.getAttribute('style') ?? ''))
  if (!carets.length || carets.some((style) => style.includes('position'))) throw new Error(`Bob's caret styles: ${JSON.stringify(carets)}`)
  await carol.waitForFunction(() => ![...document.querySelectorAll('#online-users .avatar')].some((a) => a.style.backgroundColor === 'rgb(1, 2, 3)'), null, { timeout: TIMEOUT })
  const avatar = await bobsAvatar()
  if (!avatar || avatar.style.includes('position')) throw new Error(`Bob's avatar: ${JSON.stringify(avatar)}`)

  console.log(JSON.stringify({ ok: true, rows, online, titleLock, awarenessUpdates, accessibility, errors }))
} catch (err) {
  console.log(JSON.stringify({ ok: false, step, error: String(err), errors }))
  process.exitCode = 1
} finally {
  await browser.close()
}
