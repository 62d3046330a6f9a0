// k6 steady-load scenario for POST /api/webhook/workflow.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e API_KEY=tether_demo_key_5f1c2a9e \
//          -e WEBHOOK_ID=wh_demo loadtest/workflow.js
//
// Thresholds fail the run on more than 0.1% errors or a p99 over 50 ms.
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const API_KEY = __ENV.API_KEY || 'tether_demo_key_5f1c2a9e';
const WEBHOOK_ID = __ENV.WEBHOOK_ID || 'wh_demo';

export const options = {
  scenarios: {
    steady: {
      executor: 'constant-vus',
      vus: Number(__ENV.VUS || 64),
      duration: __ENV.DURATION || '30s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    http_req_duration: ['p(99)<50'],
  },
};

// The 440-byte lead body used by the benchmarks.
const body = JSON.stringify({
  webhookId: WEBHOOK_ID,
  source: 'zillow',
  receivedVia: 'premier-agent',
  lead: {
    id: 'zl_8f2c61d0-5d2e-4b8e-9c1e-7a9b3f2d1e44',
    name: 'Alex Nguyen',
    email: 'alex.nguyen@example.com',
    phone: '+14155551234',
    message: 'Hi, I am interested in 1234 Market St #5. Is it still available for a viewing this weekend?',
    budget: { min: 850000, max: 1100000, currency: 'USD' },
    tags: ['buyer', 'pre-approved', 'vip'],
    score: 0.8712,
  },
});
const params = {
  headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
};

export default function () {
  const res = http.post(`${BASE_URL}/api/webhook/workflow`, body, params);
  check(res, { 'status is 202': (r) => r.status === 202 });
}
