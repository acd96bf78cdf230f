// A small event emitter: handlers are called in the order they were added, and one that throws
// does not keep the event from the others.

export class Emitter {
  constructor () {
    /** @type {Map<string, Set<Function>>} */
    this.handlers = new Map()
  }

  /** Calls `handler` on every `name` event until the returned function is called. */
  on (name, handler) {
    let set = this.handlers.get(name)
    if (!set) this.handlers.set(name, (set = new Set()))
    set.add(handler)
    return () => this.off(name, handler)
  }

  off (name, handler) {
    this.handlers.get(name)?.delete(handler)
  }

  emit (name, ...args) {
    for (const handler of [...(this.handlers.get(name) ?? [])]) {
      try {
        handler(...args)
      } catch (err) {
        console.error(`tandem: a '${name}' handler failed`, err)
      }
    }
  }

  clear () {
    this.handlers.clear()
  }
}
