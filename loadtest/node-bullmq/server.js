// The Node+BullMQ baseline: POST /api/webhook/workflow done the way the
// backend does it, in Express with bullmq's queue.add: the API key's SHA-256
// looked up in Redis, the org's triggers read, one job per matched workflow
// with the data the ingress writes, 202 once every add resolved.
//
//   PORT=3000 REDIS_URL=redis://127.0.0.1:6379 node server.js
'use strict';
const crypto = require('crypto');
const express = require('express');
const IORedis = require('ioredis');
const { Queue } = require('bullmq');

const redis = new IORedis(process.env.REDIS_URL || 'redis://127.0.0.1:6379', { maxRetriesPerRequest: null });
const queue = new Queue(process.env.QUEUE || 'workflow-runs', { connection: redis });
const app = express();
app.use(express.json({ limit: '1mb' }));

const fail = (res, status, error, code) =>
  res.status(status).json({ success: false, error, message: error, code });

app.post('/api/webhook/workflow', async (req, res) => {
  try {
    const auth = /^Bearer (.+)$/.exec(req.get('authorization') || '');
    if (!auth) return fail(res, 401, 'Unauthorized', 'UNAUTHORIZED');
    const digest = crypto.createHash('sha256').update(auth[1]).digest('hex');
    const record = await redis.get(`tether:apikey:${digest}`);
    const key = record && JSON.parse(record);
    if (!key || key.active === false) return fail(res, 401, 'Unauthorized', 'UNAUTHORIZED');
    const body = req.body;
    if (!body || typeof body !== 'object' || typeof body.webhookId !== 'string') {
      return fail(res, 400, 'webhookId is required', 'BAD_REQUEST');
    }
    const { webhookId, ...payload } = body;
    const workflows = await redis.smembers(`tether:triggers:${key.orgId}:${webhookId}`);
    const receivedAt = Date.now();
    const requestId = req.get('x-request-id') || crypto.randomUUID();
    await Promise.all(workflows.map((workflowId) => queue.add('webhook', {
      workflowId, orgId: key.orgId, userId: key.userId, webhookId, payload, receivedAt, requestId,
    })));
    res.status(202).json({ success: true, message: 'Webhook accepted', data: { webhookId, matchedCount: workflows.length } });
  } catch (e) {
    fail(res, 503, 'Service unavailable', 'UNAVAILABLE');
  }
});

app.listen(Number(process.env.PORT || 3000), '127.0.0.1', () => console.log('listening'));
