// xmpp.js (@xmpp/client) driven line by line, the WebSocket peer of tests/integration/test_websocket.py.
//
//   node client.mjs SERVICE DOMAIN USERNAME PASSWORD RESOURCE
//
// stdout: one JSON object a line: {"event": "online", "jid": ...}, {"event": "stanza", "xml": ...},
//         {"event": "error", "message": ...}, {"event": "offline"}
// stdin:  one JSON object a line: {"send": "<presence/>"} sends that stanza, {"stop": true} closes
//         the stream (<close/>) and exits.  The end of stdin stops it too.
//
// Reconnection is off: a dropped connection must show in the test, not be repaired.

import readline from "node:readline";

import { client } from "@xmpp/client";
import parse from "@xmpp/xml/lib/parse.js";

const [service, domain, username, password, resource] = process.argv.slice(2);

function emit(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

function describe(error) {
  return String((error && (error.condition || error.message)) || error);
}

const xmpp = client({ service, domain, username, password, resource });
xmpp.reconnect.stop();

xmpp.on("error", (error) => emit({ event: "error", message: describe(error) }));
xmpp.on("online", (address) => emit({ event: "online", jid: address.toString() }));
xmpp.on("stanza", (stanza) => emit({ event: "stanza", xml: stanza.toString() }));
xmpp.on("offline", () => emit({ event: "offline" }));

let stopping = false;

async function stop() {
  if (stopping) return;
  stopping = true;
  try {
    await xmpp.stop();
  } catch (error) {
    emit({ event: "error", message: describe(error) });
  }
  process.exit(0);
}

const input = readline.createInterface({ input: process.stdin });
input.on("line", async (line) => {
  if (!line.trim()) return;
  try {
    const command = JSON.parse(line);
    if (command.send) await xmpp.send(parse(command.send));
    if (command.stop) await stop();
  } catch (error) {
    emit({ event: "error", message: describe(error) });
  }
});
input.on("close", stop);

xmpp.start().catch((error) => {
  emit({ event: "error", message: describe(error) });
  process.exit(1);
});
