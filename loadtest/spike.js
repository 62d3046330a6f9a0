// k6 spike scenario: steady load, a sudden 8x burst, then back down.
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e API_KEY=... -e WEBHOOK_ID=... loadtest/spike.js
// During the spike some latency growth is expected; errors are not.
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const API_KEY = __ENV.API_KEY || 'tether_demo_key_5f1c2a9e';
const WEBHOOK_ID = __ENV.WEBHOOK_ID || 'wh_demo';
const BASE = Number(__ENV.VUS || 16);

export const options = {
  scenarios: {
    spike: {
      executor: 'ramping-vus',
      startVUs: BASE,
      stages: [
        { duration: '10s', target: BASE },
        { duration: '2s', target: BASE * 8 },
        { duration: '10s', target: BASE * 8 },
        { duration: '2s', target: BASE },
        { duration: '10s', target: BASE },
      ],
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    'http_req_duration{expected_response:true}': ['p(99)<200'],
  },
};

const body = JSON.stringify({ webhookId: WEBHOOK_ID, source: 'spike', lead: { name: 'Alex', phone: '+14155551234' } });
const params = { headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' } };

export default function () {
  const res = http.post(`${BASE_URL}/api/webhook/workflow`, body, params);
  check(res, { 'status is 202': (r) => r.status === 202 });
}
