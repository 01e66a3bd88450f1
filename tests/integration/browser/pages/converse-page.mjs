// Starts Converse.js on pages/converse.html for one transport, from the query
// string: ?websocket=URL or ?bosh=URL.  The person's steps (log in, type a
// message) go through the page's own form and text area; `window.agent` only
// reports Converse's state to driver.mjs and opens a chat, as a click on a
// contact would.

import converse from "../node_modules/converse.js/dist/converse.min.js";

const params = new URLSearchParams(window.location.search);
const state = { connected: false, disconnected: false, events: [] };
let api = null;

function note(what) {
  state.events.push(what);
  console.info("converse test page: " + what);
}

function until(predicate, timeoutMs, what) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const check = () => {
      const value = predicate();
      if (value) return resolve(value);
      if (Date.now() - started > timeoutMs) {
        return reject(new Error(`${what}: not within ${timeoutMs} ms; page events: ${JSON.stringify(state.events)}`));
      }
      setTimeout(check, 50);
    };
    check();
  });
}

converse.plugins.add("bridge-test", {
  initialize() {
    api = this._converse.api;
    api.listen.on("connected", () => {
      state.connected = true;
      note("connected as " + api.connection.get()?.jid);
    });
    api.listen.on("reconnected", () => note("reconnected"));
    api.listen.on("disconnected", () => {
      state.disconnected = true;
      note("disconnected");
    });
    api.listen.on("connectionInitialized", () => note("connection initialized"));
    api.listen.on("messageSend", (data) => note("message sent: " + JSON.stringify(data?.message?.get?.("body") ?? "")));
  },
});

const settings = {
  view_mode: "fullscreen",
  // Chunks and sounds come from Converse's dist folder.
  assets_path: new URL("../node_modules/converse.js/dist/", window.location.href).href,
  discover_connection_methods: false,
  auto_reconnect: false,
  allow_non_roster_messaging: true,
  play_sounds: false,
  show_desktop_notifications: false,
  i18n: "en",
  loglevel: "debug",
  whitelisted_plugins: ["bridge-test"],
  // OMEMO loads its WebAssembly relative to the page, not to assets_path, and
  // end-to-end encryption is not what these tests are about.
  blacklisted_plugins: ["converse-omemo"],
};
if (params.get("websocket")) settings.websocket_url = params.get("websocket");
if (params.get("bosh")) settings.bosh_service_url = params.get("bosh");

window.agent = {
  // Resolves with the full JID once Converse is connected and authenticated.
  // Rejects as soon as Converse reports a disconnection, with the feedback its login form shows.
  async waitConnected(timeoutMs) {
    await until(() => state.connected || state.disconnected, timeoutMs, "Converse connected");
    if (!state.connected) {
      const feedback = document.querySelector(".conn-feedback")?.textContent.trim();
      throw new Error(`Converse did not connect; the login form says ${JSON.stringify(feedback)}; `
                      + `page events: ${JSON.stringify(state.events)}`);
    }
    return api.connection.get().jid;
  },
  // Open the chat with a JID, as a click on a roster contact would.  (With a
  // JID not in the roster, Converse 14 first waits for the XEP-0191 block
  // list, and never opens the chat when the server does not offer blocking.)
  async openChat(jid) {
    await api.chats.open(jid, {}, true);
    return true;
  },
  // Open a chat room under a nickname, as Converse's "join a room" form would,
  // and resolve once Converse reports it entered (its self-presence came).
  async openRoom(jid, nick, timeoutMs) {
    await api.rooms.open(jid, { nick }, true);
    const room = await api.rooms.get(jid);
    const entered = converse.ROOMSTATUS?.ENTERED ?? converse.env?.ROOMSTATUS?.ENTERED ?? 5;
    await until(() => room.session.get("connection_status") === entered, timeoutMs, `room ${jid} entered`);
    return true;
  },
  // The messages with a body in the chat with a JID, in Converse's order (by
  // time); `archived` is true for one Converse took from a MAM query's result.
  async messages(jid) {
    const chat = await api.chats.get(jid);
    return (chat?.messages.models ?? [])
      .filter((message) => message.get("body"))
      .map((message) => ({ body: message.get("body"), sender: message.get("sender"),
                           archived: Boolean(message.get("is_archived")) }));
  },
  state() {
    return state;
  },
};

converse.initialize(settings).then(() => note("initialized"), (error) => note("initialize failed: " + error));
