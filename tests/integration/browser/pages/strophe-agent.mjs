// The agent of pages/strophe.html: one Strophe.js connection (BOSH or
// WebSocket, by the service URL's scheme) driven by driver.mjs through
// `window.agent`.  Everything it receives lands in an EventLog; every stanza
// in and out is written to the console, which the driver records.

import { EventLog } from "./events.mjs";

const { Strophe, $iq, $msg, $pres } = globalThis;
const NS_ROSTER = "jabber:iq:roster";
const NS_PING = "urn:xmpp:ping";
const NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas";

const STATUS_NAMES = Object.fromEntries(Object.entries(Strophe.Status).map(([name, value]) => [value, name]));

function childText(element, name) {
  const found = element.getElementsByTagName(name)[0];
  return found ? found.textContent : null;
}

function rosterItems(query) {
  return Array.from(query.getElementsByTagName("item")).map((item) => ({
    jid: item.getAttribute("jid"),
    subscription: item.getAttribute("subscription"),
    ask: item.getAttribute("ask"),
  }));
}

function stanzaError(element) {
  const error = element.getElementsByTagName("error")[0];
  if (!error) return null;
  const condition = Array.from(error.children).find(
    (child) => child.namespaceURI === NS_STANZAS && child.localName !== "text",
  );
  return condition ? condition.localName : "";
}

export class StropheAgent {
  constructor() {
    this.log = new EventLog();
    this.connection = null;
    this.jid = null;
    this.statuses = []; // every connection status: [name, condition, the element that caused it]
    this.statusWaiters = new Set();
  }

  // Connect and authenticate; the bound full JID.  Rejects on a failure status
  // or after timeoutMs.
  connect(service, jid, password, timeoutMs) {
    const connection = (this.connection = new Strophe.Connection(service));
    connection.xmlInput = (element) => console.debug("RECV " + Strophe.serialize(element));
    connection.xmlOutput = (element) => console.debug("SENT " + Strophe.serialize(element));
    const online = this.waitStatus(["CONNECTED"], ["CONNFAIL", "AUTHFAIL", "ERROR", "DISCONNECTED"], timeoutMs);
    connection.connect(jid, password, (status, condition, element) => this.onStatus(status, condition, element));
    return online.then(() => {
      this.jid = connection.jid;
      return this.jid;
    });
  }

  onStatus(status, condition, element) {
    const name = STATUS_NAMES[status] || String(status);
    console.info(`strophe status ${name}${condition ? " (" + condition + ")" : ""}`);
    // The element that caused the change, if any (a failed session IQ, a SASL failure...).
    this.statuses.push(element ? [name, condition || null, Strophe.serialize(element)] : [name, condition || null]);
    if (name === "CONNECTED") this.addHandlers();
    for (const waiter of [...this.statusWaiters]) waiter(name, condition);
  }

  waitStatus(wanted, failures, timeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.statusWaiters.delete(waiter);
        reject(new Error(`no status ${wanted} within ${timeoutMs} ms; statuses: ${JSON.stringify(this.statuses)}`));
      }, timeoutMs);
      const waiter = (name, condition) => {
        if (!wanted.includes(name) && !failures.includes(name)) return;
        clearTimeout(timer);
        this.statusWaiters.delete(waiter);
        if (wanted.includes(name)) resolve(name);
        else reject(new Error(`connection status ${name}${condition ? " (" + condition + ")" : ""}; `
                              + `statuses: ${JSON.stringify(this.statuses)}`));
      };
      this.statusWaiters.add(waiter);
    });
  }

  addHandlers() {
    const connection = this.connection;
    connection.addHandler((presence) => {
      this.log.add({
        kind: "presence",
        from: presence.getAttribute("from"),
        to: presence.getAttribute("to"),
        type: presence.getAttribute("type"),
        status: childText(presence, "status"),
        error: stanzaError(presence),
      });
      return true;
    }, null, "presence");
    connection.addHandler((message) => {
      this.log.add({
        kind: "message",
        from: message.getAttribute("from"),
        to: message.getAttribute("to"),
        type: message.getAttribute("type"),
        body: childText(message, "body"),
        error: stanzaError(message),
      });
      return true;
    }, null, "message");
    for (const type of ["get", "set"]) {
      connection.addHandler((iq) => this.onRequest(iq), null, "iq", type);
    }
  }

  // Requests from the server or other entities: roster pushes and pings are
  // answered, anything else gets service-unavailable.
  onRequest(iq) {
    const query = iq.firstElementChild;
    const reply = $iq({ type: "result", id: iq.getAttribute("id") });
    if (iq.getAttribute("from")) reply.attrs({ to: iq.getAttribute("from") });
    if (query && query.namespaceURI === NS_ROSTER && iq.getAttribute("type") === "set") {
      for (const item of rosterItems(query)) this.log.add({ kind: "roster", from: iq.getAttribute("from"), ...item });
    } else if (!(query && query.namespaceURI === NS_PING && iq.getAttribute("type") === "get")) {
      reply.attrs({ type: "error" });
      if (query) reply.cnode(query.cloneNode(true)).up();
      reply.c("error", { type: "cancel" }).c("service-unavailable", { xmlns: NS_STANZAS });
    }
    this.connection.send(reply);
    return true;
  }

  // Fetch the roster (RFC 6121 2.2); its items.
  roster(timeoutMs) {
    return new Promise((resolve, reject) => {
      this.connection.sendIQ(
        $iq({ type: "get" }).c("query", { xmlns: NS_ROSTER }),
        (result) => resolve(rosterItems(result.getElementsByTagName("query")[0] || result)),
        (error) => reject(new Error(error ? "roster error: " + Strophe.serialize(error) : "roster timeout")),
        timeoutMs,
      );
    });
  }

  // Send a presence: {to, type, status}, each optional.
  presence({ to, type, status } = {}) {
    const attributes = {};
    if (to) attributes.to = to;
    if (type) attributes.type = type;
    const stanza = $pres(attributes);
    if (status) stanza.c("status").t(status);
    this.connection.send(stanza);
    return true;
  }

  // Send a chat message.
  message({ to, body }) {
    this.connection.send($msg({ to, type: "chat" }).c("body").t(body));
    return true;
  }

  waitFor(spec, timeoutMs) {
    return this.log.waitFor(spec, timeoutMs);
  }

  waitForAll(specs, timeoutMs) {
    return this.log.waitForAll(specs, timeoutMs);
  }

  events() {
    return this.log.events;
  }

  // Whether this page may use a BOSH service: "allowed" when its session
  // request (a cross-origin POST of text/xml, so after a CORS preflight) is
  // answered and readable, then terminated; "blocked: REASON" when the
  // browser refuses.
  async probeBosh(url, timeoutMs) {
    const post = (body) => fetch(url, {
      method: "POST",
      headers: { "Content-Type": "text/xml; charset=utf-8" },
      body,
      signal: AbortSignal.timeout(timeoutMs),
    });
    const rid = Math.floor(Math.random() * 1e9);
    let response;
    try {
      response = await post(`<body xmlns="http://jabber.org/protocol/httpbind" xmlns:xmpp="urn:xmpp:xbosh" `
        + `rid="${rid}" to="localhost" hold="1" wait="5" ver="1.6" xml:lang="en" xmpp:version="1.0"/>`);
    } catch (error) {
      return `blocked: ${error.name}: ${error.message}`;
    }
    const text = await response.text();
    const sid = /\bsid=["']([^"']+)["']/.exec(text)?.[1];
    if (sid) {
      await post(`<body xmlns="http://jabber.org/protocol/httpbind" rid="${rid + 1}" sid="${sid}" type="terminate">`
        + `<presence type="unavailable" xmlns="jabber:client"/></body>`).catch(() => null);
    }
    return `allowed: HTTP ${response.status}${sid ? " with a session" : ": " + text.slice(0, 200)}`;
  }

  // Whether this page may open a WebSocket (subprotocol xmpp) to a URL:
  // "open", or "refused" with the close code.
  probeWebSocket(url, timeoutMs) {
    return new Promise((resolve) => {
      const socket = new WebSocket(url, "xmpp");
      const timer = setTimeout(() => {
        socket.close();
        resolve("no answer");
      }, timeoutMs);
      socket.onopen = () => {
        clearTimeout(timer);
        socket.close(1000);
        resolve(`open (subprotocol ${socket.protocol})`);
      };
      socket.onclose = (event) => {
        clearTimeout(timer);
        resolve(`refused (close code ${event.code})`);
      };
    });
  }

  // End the session (unavailable presence and stream close); resolves at DISCONNECTED.
  disconnect(timeoutMs) {
    const done = this.waitStatus(["DISCONNECTED"], [], timeoutMs);
    this.connection.disconnect("test over");
    return done.then(() => true);
  }
}
