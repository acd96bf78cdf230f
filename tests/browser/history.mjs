// The History panel, as two users find it: Ada saves a version of a query, Bob changes it, Ada
// restores the version; the confirmation names Bob, both editors show the version's text at
// once, and the version taken before the restore compares side by side with the query now.
// Screenshots go to the artifacts directory.
//
// usage: node history.mjs <server base URL> <artifacts dir>
// Prints one JSON line with what it saw; exits 0 only when everything held.
import { TIMEOUT, launch, newPage } from './browser.mjs'
import { mkdirSync } from 'node:fs'

const [base, artifacts] = process.argv.slice(2)
mkdirSync(artifacts, { recursive: true })
const browser = await launch()
const errors = []
const open = async (name, path) => {
  const page = await newPage(browser, name, errors)
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name} console: ${m.text()}`) })
  await page.goto(`${base}${path}?name=${name}`)
  await page.waitForSelector('#connection[data-state=connected]', { timeout: TIMEOUT })
  await page.waitForSelector('.cm-content', { timeout: TIMEOUT })
  return page
}
// The query's text as the page holds it (the editor's DOM also holds others' caret labels).
const sqlIs = (page, text) => page.waitForFunction((t) => window.tandem?.doc.getText('query').toString() === t, text, { timeout: TIMEOUT })

let step = 'start'
try {
  const ada = await open('Ada', '/queries/11')
  const bob = await open('Bob', '/queries/11')
  step = 'type'
  await ada.click('.cm-content')
  await ada.keyboard.type('SELECT 1')
  await sqlIs(bob, 'SELECT 1')
  step = 'save'
  await ada.fill('#version-label', 'before the change')
  await ada.click('#save-version')
  await ada.waitForFunction(() => [...document.querySelectorAll('#versions li')].some((li) => li.innerText.includes('before the change')), null, { timeout: TIMEOUT })
  step = 'bob edits'
  await bob.click('.cm-content')
  await bob.keyboard.press('End')
  await bob.keyboard.type(' + 2')
  await sqlIs(ada, 'SELECT 1 + 2')
  step = 'restore'
  const saved = ada.locator('#versions li', { hasText: 'before the change' })
  await saved.locator('.restore-version').click()
  await ada.waitForSelector('#restore-confirm:not([hidden]) #restore-warning', { timeout: TIMEOUT })
  const warning = await ada.$eval('#restore-warning', (n) => n.innerText)
  await ada.screenshot({ path: `${artifacts}/history-confirm.png` })
  await ada.click('#restore-confirmed')
  await sqlIs(ada, 'SELECT 1')
  await sqlIs(bob, 'SELECT 1')
  step = 'compare'
  await ada.waitForFunction(() => [...document.querySelectorAll('#versions li')].some((li) => li.innerText.includes('before a restore')), null, { timeout: TIMEOUT })
  await ada.locator('#versions li', { hasText: 'before a restore' }).locator('.compare-version').click()
  await ada.waitForSelector('#compare:not([hidden]) pre', { timeout: TIMEOUT })
  const compared = await ada.$$eval('#compare pre', (nodes) => nodes.map((n) => n.innerText.trim()))
  const changed = await ada.$$eval('#compare .changed', (nodes) => nodes.length)
  await ada.screenshot({ path: `${artifacts}/history-compare.png`, fullPage: true })
  step = 'offline merge'
  // Bob's tab goes offline and he keeps typing; Ada changes the query meanwhile; when Bob's
  // tab is back, it says whose changes his were merged with.
  await bob.evaluate(() => window.tandem.provider.disconnect())
  await bob.evaluate(() => { const t = window.tandem.doc.getText('query'); t.insert(t.length, ' -- bob offline') })
  await ada.evaluate(() => window.tandem.doc.getText('query').insert(0, '/* ada */ '))
  await sqlIs(ada, '/* ada */ SELECT 1')
  await bob.evaluate(() => window.tandem.provider.connect())
  await sqlIs(bob, '/* ada */ SELECT 1 -- bob offline')
  await bob.waitForSelector('#merged-banner', { timeout: TIMEOUT })
  const merged = await bob.$eval('#merged-banner', (n) => n.innerText)
  await bob.click('#merged-compare')
  await bob.waitForSelector('#compare:not([hidden]) pre', { timeout: TIMEOUT })
  const mergedCompare = await bob.$$eval('#compare pre', (nodes) => nodes.map((n) => n.innerText.trim()))
  await bob.screenshot({ path: `${artifacts}/history-merged.png`, fullPage: true })
  step = 'offline title'
  // Bob edits the title offline while Ada edits it online: the two changes merge into one
  // title, not two titles glued together.
  const titleIs = (page, text) => page.waitForFunction((t) => window.tandem?.doc.getText('title').toString() === t, text, { timeout: TIMEOUT })
  await ada.click('#title')
  await ada.keyboard.type('Revenue by region')
  await ada.click('.cm-content')
  await titleIs(bob, 'Revenue by region')
  await bob.evaluate(() => window.tandem.provider.disconnect())
  await bob.click('#title')
  await bob.keyboard.press('End')
  await bob.keyboard.type(' (EMEA)')
  await bob.click('.cm-content')
  await ada.click('#title')
  await ada.keyboard.press('End')
  await ada.keyboard.type(' 2024')
  await ada.click('.cm-content')
  await titleIs(ada, 'Revenue by region 2024')
  await bob.evaluate(() => window.tandem.provider.connect())
  await ada.waitForFunction(() => window.tandem.doc.getText('title').toString().includes('(EMEA)'), null, { timeout: TIMEOUT })
  const titles = [await ada.evaluate(() => window.tandem.doc.getText('title').toString()), await bob.evaluate(() => window.tandem.doc.getText('title').toString())]
  step = 'phone'
  await ada.setViewportSize({ width: 390, height: 844 })
  const overflow = await ada.evaluate(() => document.documentElement.scrollWidth > innerWidth + 1)
  await ada.screenshot({ path: `${artifacts}/history-phone.png`, fullPage: true })
  console.log(JSON.stringify({ ok: true, warning, compared, changed, merged, mergedCompare, titles, overflow, errors }))
} catch (err) {
  const texts = []
  for (const context of browser.contexts()) {
    for (const page of context.pages()) texts.push(await page.evaluate(() => window.tandem?.doc.getText('query').toString()).catch(() => null))
  }
  const notes = []
  for (const context of browser.contexts()) {
    for (const page of context.pages()) notes.push(await page.evaluate(() => document.querySelector('#history-note')?.innerText).catch(() => null))
  }
  console.log(JSON.stringify({ ok: false, step, error: String(err), texts, notes, errors }))
  process.exitCode = 1
} finally {
  await browser.close()
}
