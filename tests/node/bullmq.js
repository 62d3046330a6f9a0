// The tests' hands on real BullMQ: `node bullmq.js MAJOR COMMAND REDIS_URL QUEUE [ARGS]`.
// MAJOR is 5 or 6 (bullmq5 = bullmq@5.81.5, bullmq6 = bullmq@6.7.0, npm aliases).
// Every output is one JSON line on stdout.
//   worker [--fail-first] [--prefix P]  run a Worker: "ready" once it is connected,
//                          then one "job" line per processing attempt
//                          and one "completed" line per finished job. With --fail-first,
//                          a job's first attempt throws.
//   add NAME DATA OPTS     queue.add(NAME, JSON.parse(DATA), JSON.parse(OPTS)); prints the id
//   pause | resume         queue.pause() / queue.resume()
//   open                   construct the Queue and let it write its meta, then exit
'use strict';
const [major, command, url, queueName, ...rest] = process.argv.slice(2);
const { Queue, Worker } = require(major === '5' ? 'bullmq5' : 'bullmq6');

// redis-cluster://h:p?node=h:p&node=h:p → an ioredis Cluster on those seeds
// (BullMQ takes a connection instance); anything else → host and port.
function connect(url) {
  const u = new URL(url.replace(/^redis-cluster:/, 'redis:'));
  if (!url.startsWith('redis-cluster:')) {
    return { host: u.hostname, port: Number(u.port), maxRetriesPerRequest: null };
  }
  const seeds = [`${u.hostname}:${u.port}`, ...u.searchParams.getAll('node')].map((hp) => {
    const [host, port] = hp.split(':');
    return { host, port: Number(port) };
  });
  const IORedis = require('ioredis');
  return new IORedis.Cluster(seeds, { redisOptions: { maxRetriesPerRequest: null } });
}
const connection = connect(url);
const prefixAt = rest.indexOf('--prefix');
const prefix = prefixAt >= 0 ? rest[prefixAt + 1] : 'bull';
const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

async function main() {
  if (command === 'worker') {
    const failFirst = rest.includes('--fail-first');
    const worker = new Worker(
      queueName,
      async (job) => {
        say({ event: 'job', id: job.id, name: job.name, data: job.data, opts: job.opts,
              attemptsMade: job.attemptsMade, timestamp: job.timestamp, at: Date.now() });
        if (failFirst && job.attemptsMade === 0) throw new Error('first attempt fails');
        return 'done';
      },
      // Not running until "ready" is said: a job run before it would be
      // reported ahead of the line the tests wait for, and skipped.
      { connection, prefix, autorun: false },
    );
    worker.on('completed', (job) => say({ event: 'completed', id: job.id, finishedOn: job.finishedOn }));
    worker.on('error', (e) => say({ event: 'error', message: String(e) }));
    await worker.waitUntilReady();
    say({ event: 'ready' });
    worker.run().catch((e) => say({ event: 'error', message: String(e) }));
    process.stdin.on('end', () => worker.close().then(() => process.exit(0)));
    process.stdin.resume();
    return;
  }
  const queue = new Queue(queueName, { connection, prefix });
  await queue.waitUntilReady();
  if (command === 'add') {
    const job = await queue.add(rest[0], JSON.parse(rest[1]), JSON.parse(rest[2]));
    say({ id: job.id });
  } else if (command === 'pause') {
    await queue.pause();
    say({ paused: true });
  } else if (command === 'resume') {
    await queue.resume();
    say({ paused: false });
  } else if (command === 'open') {
    // The meta (version, opts.maxLenEvents) is written when the Queue connects.
    await new Promise((r) => setTimeout(r, 200));
    say({ opened: true });
  } else {
    throw new Error(`unknown command ${command}`);
  }
  await queue.close();
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + '\n');
  process.exit(1);
});
