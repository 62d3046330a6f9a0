// The backend's reading of a request body, to hold the ingress's reading to:
// `node body-parser.js` reads one JSON line per case on stdin,
//   {"body": HEX, "status": 202|400, "webhookId": TEXT|null, "payload": HEX|null}
// (the request body; the ingress's answer; the entry's webhookId and payload
// when it stored one), runs the body through `json()` of body-parser 1
// (Express 4) and 2 (Express 5), and prints one JSON line per case:
// {"ok": true} when the ingress accepted exactly what both accept, with a
// payload JSON.parse reads as their body less `webhookId`; else the reason.
'use strict';
const { Readable } = require('stream');
const { isDeepStrictEqual } = require('util');
const parsers = { 'body-parser 1': require('body-parser1'), 'body-parser 2': require('body-parser2') };

function read(parser, bytes) {
  const req = Readable.from([bytes]);
  req.headers = { 'content-type': 'application/json', 'content-length': String(bytes.length) };
  req.method = 'POST';
  return new Promise((done) => parser.json()(req, {}, (err) => done(err ? null : req.body)));
}

async function check(c) {
  for (const [name, parser] of Object.entries(parsers)) {
    const body = await read(parser, Buffer.from(c.body, 'hex'));
    const takes = body !== null && typeof body === 'object' && !Array.isArray(body)
      && typeof body.webhookId === 'string';
    if (takes !== (c.status === 202)) {
      return `${name} ${takes ? 'takes' : 'refuses'} it, the ingress answered ${c.status}`;
    }
    if (!takes) continue;
    if (c.webhookId !== body.webhookId) {
      return `${name} reads webhookId ${JSON.stringify(body.webhookId)}, the entry has ${JSON.stringify(c.webhookId)}`;
    }
    delete body.webhookId;
    const stored = JSON.parse(Buffer.from(c.payload, 'hex').toString('utf8'));
    if (!isDeepStrictEqual(stored, body)) {
      return `${name} reads ${JSON.stringify(body)}, the stored payload reads ${JSON.stringify(stored)}`;
    }
  }
  return null;
}

(async () => {
  const lines = require('fs').readFileSync(0, 'utf8').split('\n').filter(Boolean);
  for (const line of lines) {
    const why = await check(JSON.parse(line));
    console.log(JSON.stringify(why === null ? { ok: true } : { ok: false, why }));
  }
})();
