// A direct SMPP client of the test SMSC (server.js), for bench/sms_bench.py: it binds as a
// transceiver with the smpp package's client and sends --count submit_sm, keeping at most
// --window awaiting their answer, the same kind of PDU bridge sends (GSM text, one part).
//   --port N  --host H  --count N  --window N  --system-id S  --password P
// Prints one JSON line: {"event": "done", "count", "accepted", "seconds", "rate", "window"}
// (seconds from the first submit_sm written to the last answer read).
'use strict';
const smpp = require('smpp');

const options = {host: '127.0.0.1', port: 2775, count: 10000, window: 10, systemId: 'load', password: 'pw'};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(name in options)) {
        throw new Error('unknown option ' + argv[i]);
    }
    options[name] = typeof options[name] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
}

const session = smpp.connect({host: options.host, port: options.port});
let sent = 0;
let answered = 0;
let accepted = 0;
let start = null;

function finish() {
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    process.stdout.write(JSON.stringify({event: 'done', count: answered, accepted: accepted, seconds: seconds,
                                         rate: answered / seconds, window: options.window}) + '\n');
    session.unbind(() => session.close());
    setTimeout(() => process.exit(0), 500).unref();
}

function pump() {
    while (sent < options.count && sent - answered < options.window) {
        const n = sent++;
        session.submit_sm({source_addr_ton: 1, source_addr_npi: 1, source_addr: '1000', dest_addr_ton: 1,
                           dest_addr_npi: 1, destination_addr: String(15550000000 + (n % 1000)),
                           data_coding: 0, registered_delivery: 0,
                           short_message: 'Alice: bench message ' + n}, (pdu) => {
            answered += 1;
            if (pdu.command_status === 0) {
                accepted += 1;
            }
            if (answered === options.count) {
                finish();
            } else {
                pump();
            }
        });
    }
}

session.on('error', (error) => {
    process.stderr.write('load.js: ' + error + '\n');
    process.exit(1);
});
session.bind_transceiver({system_id: options.systemId, password: options.password}, (pdu) => {
    if (pdu.command_status !== 0) {
        process.stderr.write('load.js: bind refused, status ' + pdu.command_status + '\n');
        process.exit(1);
    }
    start = process.hrtime.bigint();
    pump();
});
