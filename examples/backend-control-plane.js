// What the Node backend writes so the ingress sees its changes (CONTRACT §2),
// with ioredis. Plain commands only: the ingress tracks these keys and sees
// each change within a second; no publish, no restart.
//
// Use the functions from the backend's own code, or try them from a shell:
//   node examples/backend-control-plane.js REDIS_URL create-key PLAIN_KEY USER_ID ORG_ID
//   node examples/backend-control-plane.js REDIS_URL revoke-key PLAIN_KEY
//   node examples/backend-control-plane.js REDIS_URL set-trigger ORG_ID WEBHOOK_ID [WORKFLOW_ID...]
// REDIS_URL is the ingress's own (redis://…, or redis-cluster://…?node=…).
// Every write names one key, so it works the same on a Redis Cluster.
'use strict';
const crypto = require('crypto');
const { connect } = require('./redis-connection');

const PREFIX = 'tether:';
const sha256 = (text) => crypto.createHash('sha256').update(text).digest('hex');

// When a key is created: store only its SHA-256, never the plain key.
async function createApiKey(redis, plainKey, { userId, orgId, rateLimitPerSec }) {
  const record = { userId, orgId, active: true };
  if (rateLimitPerSec) record.rateLimitPerSec = rateLimitPerSec;
  await redis.set(`${PREFIX}apikey:${sha256(plainKey)}`, JSON.stringify(record));
}

// When a key is revoked: delete its record (or set "active":false to keep it).
async function revokeApiKey(redis, plainKey) {
  await redis.del(`${PREFIX}apikey:${sha256(plainKey)}`);
}

// When a workflow's webhook trigger changes: make the set hold exactly the
// workflows triggered by (orgId, webhookId). Additions go first, then
// removals, so a lead arriving in between never finds the set empty.
async function setWebhookTrigger(redis, orgId, webhookId, workflowIds) {
  const key = `${PREFIX}triggers:${orgId}:${webhookId}`;
  if (workflowIds.length === 0) return redis.del(key);
  const current = await redis.smembers(key);
  const stale = current.filter((id) => !workflowIds.includes(id));
  await redis.sadd(key, ...workflowIds);
  if (stale.length > 0) await redis.srem(key, ...stale);
}

module.exports = { createApiKey, revokeApiKey, setWebhookTrigger };

if (require.main === module) {
  const [url, command, ...args] = process.argv.slice(2);
  const redis = connect(url);
  const run = {
    'create-key': () => createApiKey(redis, args[0], { userId: args[1], orgId: args[2] }),
    'revoke-key': () => revokeApiKey(redis, args[0]),
    'set-trigger': () => setWebhookTrigger(redis, args[0], args[1], args.slice(2)),
  }[command];
  if (!run) {
    console.error('commands: create-key, revoke-key, set-trigger');
    process.exit(2);
  }
  run()
    .then(() => redis.quit())
    .catch((e) => {
      console.error(e.message);
      process.exit(1);
    });
}
