// What a page's agent received, and bounded waits on it.
//
// An event is a plain object: {kind: "presence" | "message" | "roster" | ...,
// from, to, type, status, body, ...}, absent values as null.  A wait takes a
// spec of the same shape; every key of the spec must equal the event's value,
// except that a "from" without a resource matches the bare JID of the event's.

export function bare(jid) {
  return typeof jid === "string" ? jid.split("/", 1)[0] : jid;
}

export function matches(event, spec) {
  for (const [key, want] of Object.entries(spec)) {
    const have = event[key] === undefined ? null : event[key];
    if ((key === "from" || key === "to") && typeof want === "string" && !want.includes("/")) {
      if (bare(have) !== want) return false;
    } else if (have !== want) {
      return false;
    }
  }
  return true;
}

export class EventLog {
  constructor() {
    this.events = [];
    this.waiters = new Set();
  }

  add(event) {
    this.events.push(event);
    for (const waiter of [...this.waiters]) {
      if (matches(event, waiter.spec)) waiter.resolve(event);
    }
  }

  // The first event (already received or to come) that matches the spec;
  // rejects after timeoutMs, naming what was received instead.
  waitFor(spec, timeoutMs) {
    const found = this.events.find((event) => matches(event, spec));
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const waiter = { spec };
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        const recent = this.events.slice(-15).map((event) => JSON.stringify(event)).join("\n  ");
        reject(new Error(`nothing matching ${JSON.stringify(spec)} within ${timeoutMs} ms; `
                         + `received ${this.events.length} events, the last ones:\n  ${recent}`));
      }, timeoutMs);
      waiter.resolve = (event) => {
        clearTimeout(timer);
        this.waiters.delete(waiter);
        resolve(event);
      };
      this.waiters.add(waiter);
    });
  }

  // Every spec matched (in any order); the events, in the order of the specs.
  waitForAll(specs, timeoutMs) {
    return Promise.all(specs.map((spec) => this.waitFor(spec, timeoutMs)));
  }
}
