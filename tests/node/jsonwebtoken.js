// The backend's reading of a session JWT, to hold the ingress's reading to:
// `node jsonwebtoken.js SECRET LEEWAY_SECS` reads one token per line on
// stdin, verifies each with jsonwebtoken (`verify(token, secret,
// {algorithms: ['HS256'], clockTolerance})`) and takes the caller's
// identity as the backend does, `userId || sub` and `orgId`, and prints one
// JSON line per token: {"user": TEXT, "org": TEXT} when it is taken, else
// {"refused": REASON}.
'use strict';
const jwt = require('jsonwebtoken');

const [secret, leeway] = process.argv.slice(2);
for (const token of require('fs').readFileSync(0, 'utf8').split('\n').filter((l) => l !== '')) {
  let out;
  try {
    const claims = jwt.verify(token, secret, { algorithms: ['HS256'], clockTolerance: Number(leeway) });
    const user = claims.userId || claims.sub;
    const org = claims.orgId;
    if (typeof claims !== 'object' || claims === null) out = { refused: 'claims are not an object' };
    else if (typeof user !== 'string' || user === '') out = { refused: 'no userId or sub string' };
    else if (typeof org !== 'string' || org === '') out = { refused: 'no orgId string' };
    else out = { user, org };
  } catch (e) {
    out = { refused: `${e.name}: ${e.message}` };
  }
  console.log(JSON.stringify(out));
}
