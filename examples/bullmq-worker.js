// A BullMQ Worker, as the backend's workflow runner has one, running the jobs
// the ingress adds in BullMQ mode (TETHER_INGRESS_SINK=bullmq). Nothing in it
// knows about the ingress: these are ordinary BullMQ jobs.
//
//   npm install bullmq            # 6.x (5.x works too)
//   node examples/bullmq-worker.js [REDIS_URL] [PREFIX]
//
// REDIS_URL is the ingress's own (default redis://127.0.0.1:6379; a
// redis-cluster://…?node=… URL connects an ioredis Cluster), PREFIX the
// ingress's bullmq.prefix (default bull; on a cluster a hash tag like {bull}).
// Prints one JSON line per job: its queue, id, name and data.
'use strict';
const { Worker } = require('bullmq');
const { connect } = require('./redis-connection');

const connection = connect(process.argv[2] || 'redis://127.0.0.1:6379', { maxRetriesPerRequest: null });
const prefix = process.argv[3] || 'bull';

for (const queue of ['workflow-runs', 'outreach-runs']) {
  const worker = new Worker(queue, async (job) => {
    console.log(JSON.stringify({ queue, id: job.id, name: job.name, data: job.data }));
  }, { connection, prefix });
  worker.on('ready', () => console.error(`waiting for jobs on ${queue}`));
  worker.on('failed', (job, err) => console.error(`${queue} ${job && job.id} failed: ${err.message}`));
}
