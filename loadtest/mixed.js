// k6 mixed scenario: workflow with 0, 1 and 10 matches, outreach raw and
// fixed, and a share of bad keys (which must get 401, never 5xx).
//   k6 run -e BASE_URL=... -e API_KEY=... -e WEBHOOK_ONE=wh_one -e WEBHOOK_TEN=wh_ten \
//          -e CONFIGURATION_ID=cfg_load loadtest/mixed.js
// loadtest/run.py seeds exactly these names.
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const API_KEY = __ENV.API_KEY || 'load_key_0';
const ONE = __ENV.WEBHOOK_ONE || 'wh_one';
const TEN = __ENV.WEBHOOK_TEN || 'wh_ten';
const CONFIG = __ENV.CONFIGURATION_ID || 'cfg_load';

export const options = {
  scenarios: {
    mixed: { executor: 'constant-vus', vus: Number(__ENV.VUS || 32), duration: __ENV.DURATION || '30s' },
  },
  thresholds: {
    'checks': ['rate>0.999'],
    'http_req_duration{kind:workflow_1}': ['p(99)<50'],
  },
};

const auth = (key) => ({ headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' } });
const lead = { name: 'Alex Nguyen', email: 'alex@example.com', phone: 14155551234, score: 1.10 };

export default function () {
  const roll = Math.random();
  let res;
  if (roll < 0.35) {
    res = http.post(`${BASE_URL}/api/webhook/workflow`, JSON.stringify({ webhookId: ONE, lead }), { ...auth(API_KEY), tags: { kind: 'workflow_1' } });
    check(res, { 'workflow 1 match: 202': (r) => r.status === 202 && r.json('data.matchedCount') === 1 });
  } else if (roll < 0.5) {
    res = http.post(`${BASE_URL}/api/webhook/workflow`, JSON.stringify({ webhookId: TEN, lead }), { ...auth(API_KEY), tags: { kind: 'workflow_10' } });
    check(res, { 'workflow 10 matches: 202': (r) => r.status === 202 && r.json('data.matchedCount') === 10 });
  } else if (roll < 0.6) {
    res = http.post(`${BASE_URL}/api/webhook/workflow`, JSON.stringify({ webhookId: 'wh_nothing', lead }), { ...auth(API_KEY), tags: { kind: 'workflow_0' } });
    check(res, { 'workflow 0 matches: 202': (r) => r.status === 202 && r.json('data.matchedCount') === 0 });
  } else if (roll < 0.75) {
    res = http.post(`${BASE_URL}/api/webhook/outreach`, JSON.stringify({ configurationId: CONFIG, firstName: 'Jane', jobTitle: 'Engineer', lastMessage: 'hi' }), { ...auth(API_KEY), tags: { kind: 'outreach_raw' } });
    check(res, { 'outreach raw: 200': (r) => r.status === 200 });
  } else if (roll < 0.9) {
    res = http.post(`${BASE_URL}/api/webhook/outreach`, JSON.stringify({ configurationId: CONFIG, contacts: { firstName: 'Jane' }, applications: { company: 'Acme' } }), { ...auth(API_KEY), tags: { kind: 'outreach_fixed' } });
    check(res, { 'outreach fixed: 200': (r) => r.status === 200 });
  } else {
    res = http.post(`${BASE_URL}/api/webhook/workflow`, JSON.stringify({ webhookId: ONE }), { ...auth(`user_bad_${__VU}_${__ITER}`), tags: { kind: 'bad_key' } });
    check(res, { 'bad key: 401': (r) => r.status === 401 });
  }
}
