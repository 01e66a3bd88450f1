// The test SMSC of tests/integration/test_sms.py: the smpp package's server,
// with faults chosen on the command line:
//   --port N            listen there (0: a free port; printed)
//   --refuse-binds N    answer the first N binds ESME_RBINDFAIL
//   --throttle N        answer the first N submit_sm ESME_RTHROTTLED
//   --syserr N          answer the next N submit_sm (after throttling) ESME_RSYSERR
//   --drop-after N      close the connection on receiving submit_sm number N (unanswered, not counted)
//   --delay-ms N        answer submit_sm after N ms (every one, or the first --delay-count)
//   --delay-count N     only the first N submit_sm are answered late (0: every one)
//   --quiet 1           no event per submit_sm: a 'tick' event per second with the count
//                       of that second (for the benchmark); {"cmd": "stats"} prints totals
//   --receipts hex|dec  send a delivery receipt for each accepted part, its id in that base
//   --tls-cert PATH     TLS from the first byte with this PEM certificate (and --tls-key PATH,
//   --tls-key PATH      its key); a failed handshake is a 'tls_error' event
// Every event is printed as one JSON line on stdout; JSON lines on stdin are
// commands: {"cmd": "mo", "source_addr": "...", "destination_addr": "...", "hex": "..."}
// sends a deliver_sm (short_message given in hex, data_coding 0) to every bound session;
// {"cmd": "stats"} prints the totals, {"cmd": "reset"} zeroes them, {"cmd": "binds",
// "refuse": N} refuses the next N binds.
// A submit_sm is recorded ('submit_sm' or 'submit_sm_refused') only when its answer is
// written (handed to the kernel) to a connection still open: one answered after the ESME went away is
// 'submit_sm_unanswered' (the ESME never learns of it).  'outstanding' is the number of
// submit_sm of that session awaiting their answer when this one arrived, itself included.
'use strict';
const fs = require('fs');
const smpp = require('smpp');
const readline = require('readline');

const options = {port: 0, refuseBinds: 0, throttle: 0, syserr: 0, dropAfter: 0, delayMs: 0, delayCount: 0,
                 receipts: '', quiet: 0, tlsCert: '', tlsKey: ''};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(name in options)) {
        throw new Error('unknown option ' + argv[i]);
    }
    options[name] = typeof options[name] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
}

function emit(event) {
    process.stdout.write(JSON.stringify(event) + '\n');
}

const sessions = new Set();
let nextId = 1000;
let submits = 0;
// Totals of accepted submit_sm (for --quiet and {"cmd": "stats"}): times in ms since start.
const started = process.hrtime.bigint();
const now = () => Number(process.hrtime.bigint() - started) / 1e6;
let stats = {accepted: 0, first_ms: null, last_ms: null, max_outstanding: 0};
let tick = 0;
if (options.quiet) {
    setInterval(() => {
        if (tick) {
            emit({event: 'tick', submits: tick, total: stats.accepted, at_ms: now()});
            tick = 0;
        }
    }, 1000).unref();
}

// With a key and a certificate the package makes a tls.Server: sessions start once the handshake is done.
const tlsOptions = options.tlsCert ? {cert: fs.readFileSync(options.tlsCert), key: fs.readFileSync(options.tlsKey)}
                                   : {};
const server = smpp.createServer(tlsOptions, (session) => {
    session.outstanding = 0;
    session.gone = false;
    session.on('error', (error) => emit({event: 'error', error: String(error)}));
    session.on('close', () => { session.gone = true; sessions.delete(session); emit({event: 'close'}); });
    session.on('bind_transceiver', (pdu) => {
        if (options.refuseBinds > 0) {
            options.refuseBinds -= 1;
            emit({event: 'bind_refused', system_id: pdu.system_id});
            session.send(pdu.response({command_status: smpp.ESME_RBINDFAIL}));
            return;
        }
        emit({event: 'bind', system_id: pdu.system_id, password: pdu.password, system_type: pdu.system_type});
        session.send(pdu.response());
        sessions.add(session);
    });
    session.on('enquire_link', (pdu) => session.send(pdu.response()));
    session.on('unbind', (pdu) => { emit({event: 'unbind'}); session.send(pdu.response()); session.close(); });
    session.on('deliver_sm_resp', (pdu) => emit({event: 'deliver_sm_resp', status: pdu.command_status}));
    session.on('submit_sm', (pdu) => {
        submits += 1;
        const message = pdu.short_message || {};
        const udh = (message.udh || []).map((b) => b.toString('hex')).join('');
        if (options.dropAfter && submits === options.dropAfter) {
            emit({event: 'dropped', udh: udh, destination_addr: pdu.destination_addr});
            session.gone = true;
            session.destroy ? session.destroy() : session.close();
            return;
        }
        session.outstanding += 1;
        stats.max_outstanding = Math.max(stats.max_outstanding, session.outstanding);
        let status = smpp.ESME_ROK;
        if (options.throttle > 0) {
            options.throttle -= 1;
            status = smpp.ESME_RTHROTTLED;
        } else if (options.syserr > 0) {
            options.syserr -= 1;
            status = smpp.ESME_RSYSERR;
        }
        const id = nextId++;
        const record = {event: status === smpp.ESME_ROK ? 'submit_sm' : 'submit_sm_refused', status: status,
                        source_addr: pdu.source_addr, destination_addr: pdu.destination_addr,
                        data_coding: pdu.data_coding, esm_class: pdu.esm_class,
                        registered_delivery: pdu.registered_delivery,
                        udh: udh, outstanding: session.outstanding,
                        message: typeof message.message === 'string' ? message.message : String(message.message),
                        message_id: status === smpp.ESME_ROK ? id.toString(16) : null};
        const answer = () => {
            session.outstanding -= 1;
            if (session.gone || session.closed || !session.socket.writable) {
                record.event = 'submit_sm_unanswered';
                emit(record);
                return;
            }
            if (status === smpp.ESME_ROK) {
                const at = now();
                stats.accepted += 1;
                stats.first_ms = stats.first_ms === null ? at : stats.first_ms;
                stats.last_ms = at;
                tick += 1;
            }
            // The record is printed once the answer is handed to the kernel, so that a test
            // stopping this process on seeing it cannot take back an answer it saw.
            session.send(pdu.response(status === smpp.ESME_ROK ? {message_id: id.toString(16)}
                                                                : {command_status: status}), () => {
                if (!options.quiet || status !== smpp.ESME_ROK) {
                    emit(record);
                }
            });
            if (status === smpp.ESME_ROK && options.receipts && pdu.registered_delivery) {
                const reported = options.receipts === 'dec' ? String(id) : id.toString(16);
                const text = 'id:' + reported + ' sub:001 dlvr:001 submit date:2401011200 ' +
                             'done date:2401011201 stat:DELIVRD err:000 text:';
                session.deliver_sm({source_addr: pdu.destination_addr, destination_addr: pdu.source_addr,
                                    esm_class: 4, short_message: Buffer.from(text, 'latin1')});
            }
        };
        if (options.delayMs && (!options.delayCount || submits <= options.delayCount)) {
            setTimeout(answer, options.delayMs);
        } else {
            answer();
        }
    });
});

server.on('tlsClientError', (error) => emit({event: 'tls_error', code: error.code || null,
                                             error: String(error)}));
server.listen(options.port, '127.0.0.1', () => emit({event: 'listening', port: server.address().port}));

readline.createInterface({input: process.stdin}).on('line', (line) => {
    if (!line.trim()) {
        return;
    }
    const command = JSON.parse(line);
    if (command.cmd === 'mo') {
        for (const session of sessions) {
            session.deliver_sm({source_addr: command.source_addr, destination_addr: command.destination_addr,
                                data_coding: 0, short_message: Buffer.from(command.hex, 'hex')});
        }
        emit({event: 'mo_sent', sessions: sessions.size});
    } else if (command.cmd === 'stats') {
        emit(Object.assign({event: 'stats', submits: submits, at_ms: now()}, stats));
    } else if (command.cmd === 'reset') {
        if (tick) {
            emit({event: 'tick', submits: tick, total: stats.accepted, at_ms: now()});
            tick = 0;
        }
        submits = 0;
        stats = {accepted: 0, first_ms: null, last_ms: null, max_outstanding: 0};
        emit({event: 'reset'});
    } else if (command.cmd === 'binds') {
        options.refuseBinds = Number(command.refuse) || 0;
        emit({event: 'binds', refuse: options.refuseBinds});
    }
}).on('close', () => process.exit(0));
