// The backend's routing of a request path, to hold the ingress's routing to:
// `node express-routes.js` reads one request path per line on stdin (sent
// as is, percent-escapes and all), mounts the two webhook routes on an
// Express 4 and an Express 5 app with their default settings, POSTs each
// path to both, and prints one JSON line per path:
// {"express4": "workflow"|"outreach"|null, "express5": …}, null when
// neither route took it.
'use strict';
const http = require('http');
const apps = { express4: require('express4'), express5: require('express5') };

function serve(express) {
  const app = express();
  app.post('/api/webhook/workflow', (req, res) => res.send('workflow'));
  app.post('/api/webhook/outreach', (req, res) => res.send('outreach'));
  app.use((req, res) => res.status(404).send(''));
  const server = http.createServer(app);
  return new Promise((done) => server.listen(0, '127.0.0.1', () => done(server)));
}

function post(server, path) {
  return new Promise((done, fail) => {
    const req = http.request(
      { host: '127.0.0.1', port: server.address().port, method: 'POST', path },
      (res) => {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () => done(res.statusCode === 200 ? text : null));
      },
    );
    req.on('error', fail);
    req.end();
  });
}

async function main() {
  const paths = require('fs').readFileSync(0, 'utf8').split('\n').filter((l) => l !== '');
  const servers = {};
  for (const [name, express] of Object.entries(apps)) servers[name] = await serve(express);
  for (const path of paths) {
    const out = {};
    for (const [name, server] of Object.entries(servers)) out[name] = await post(server, path);
    console.log(JSON.stringify(out));
  }
  for (const server of Object.values(servers)) server.close();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
