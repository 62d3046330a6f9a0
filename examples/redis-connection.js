// An ioredis connection for the ingress's own Redis URL forms, for the
// examples: redis://, rediss://, and redis-cluster:// / rediss-cluster://
// (the seeds are the host and every node= of the query; ioredis discovers the
// rest). BullMQ takes the returned instance as its `connection`.
'use strict';
const Redis = require('ioredis');

function connect(text, extra = {}) {
  const cluster = /^rediss?-cluster:\/\//.test(text);
  if (!cluster) return new Redis(text, extra);
  const tls = text.startsWith('rediss-');
  const url = new URL(text.replace(/^rediss?-cluster:/, tls ? 'rediss:' : 'redis:'));
  const seeds = [`${url.hostname}:${url.port || 6379}`, ...url.searchParams.getAll('node')].map((hp) => {
    const at = hp.lastIndexOf(':');
    return { host: hp.slice(0, at), port: Number(hp.slice(at + 1)) };
  });
  const redisOptions = { ...extra };
  if (url.username) redisOptions.username = decodeURIComponent(url.username);
  if (url.password) redisOptions.password = decodeURIComponent(url.password);
  if (tls) redisOptions.tls = {};
  return new Redis.Cluster(seeds, { redisOptions });
}

module.exports = { connect };
