// The test SMSC of tests/integration/test_sms.py: the smpp package's server,
// with faults chosen on the command line:
//   --port N            listen there (0: a free port; printed)
//   --refuse-binds N    answer the first N binds ESME_RBINDFAIL
//   --throttle N        answer the first N submit_sm ESME_RTHROTTLED
//   --syserr N          answer the next N submit_sm (after throttling) ESME_RSYSERR
//   --drop-after N      close the connection on receiving submit_sm number N (unanswered, not counted)
//   --delay-ms N        answer every submit_sm after N ms
//   --receipts hex|dec  send a delivery receipt for each accepted part, its id in that base
// Every event is printed as one JSON line on stdout; JSON lines on stdin are
// commands: {"cmd": "mo", "source_addr": "...", "destination_addr": "...", "hex": "..."}
// sends a deliver_sm (short_message given in hex, data_coding 0) to every bound session.
'use strict';
const smpp = require('smpp');
const readline = require('readline');

const options = {port: 0, refuseBinds: 0, throttle: 0, syserr: 0, dropAfter: 0, delayMs: 0, receipts: ''};
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

const server = smpp.createServer({}, (session) => {
    session.on('error', (error) => emit({event: 'error', error: String(error)}));
    session.on('close', () => { sessions.delete(session); emit({event: 'close'}); });
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
        if (options.dropAfter && submits === options.dropAfter) {
            emit({event: 'dropped'});
            session.destroy ? session.destroy() : session.close();
            return;
        }
        let status = smpp.ESME_ROK;
        if (options.throttle > 0) {
            options.throttle -= 1;
            status = smpp.ESME_RTHROTTLED;
        } else if (options.syserr > 0) {
            options.syserr -= 1;
            status = smpp.ESME_RSYSERR;
        }
        const message = pdu.short_message || {};
        const id = nextId++;
        const record = {event: status === smpp.ESME_ROK ? 'submit_sm' : 'submit_sm_refused', status: status,
                        source_addr: pdu.source_addr, destination_addr: pdu.destination_addr,
                        data_coding: pdu.data_coding, esm_class: pdu.esm_class,
                        registered_delivery: pdu.registered_delivery,
                        udh: (message.udh || []).map((b) => b.toString('hex')).join(''),
                        message: typeof message.message === 'string' ? message.message : String(message.message),
                        message_id: status === smpp.ESME_ROK ? id.toString(16) : null};
        const answer = () => {
            if (session.closed) {
                return;
            }
            emit(record);
            session.send(pdu.response(status === smpp.ESME_ROK ? {message_id: id.toString(16)}
                                                                : {command_status: status}));
            if (status === smpp.ESME_ROK && options.receipts && pdu.registered_delivery) {
                const reported = options.receipts === 'dec' ? String(id) : id.toString(16);
                const text = 'id:' + reported + ' sub:001 dlvr:001 submit date:2401011200 ' +
                             'done date:2401011201 stat:DELIVRD err:000 text:';
                session.deliver_sm({source_addr: pdu.destination_addr, destination_addr: pdu.source_addr,
                                    esm_class: 4, short_message: Buffer.from(text, 'latin1')});
            }
        };
        if (options.delayMs) {
            setTimeout(answer, options.delayMs);
        } else {
            answer();
        }
    });
});

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
    }
}).on('close', () => process.exit(0));
