// Turns a backend's exported documents (mongoexport's JSON lines, one
// collection per file) into `tether-ingress import` lines (CONTRACT §3c).
// The field names below are an example schema: adapt the four mappers to
// your own collections.
//
//   mongoexport --collection=apikeys   --out=apikeys.json
//   mongoexport --collection=workflows --out=workflows.json
//   node examples/export-to-import.js apikeys apikeys.json     >  import.jsonl
//   node examples/export-to-import.js workflows workflows.json >> import.jsonl
//   tether-ingress import --dry-run import.jsonl    # see what would change
//   tether-ingress import import.jsonl
'use strict';
const fs = require('fs');
const readline = require('readline');

// Extended JSON ids ({"$oid": "..."}) become plain strings.
const id = (v) => (v && typeof v === 'object' && '$oid' in v ? v.$oid : v == null ? v : String(v));

const mappers = {
  // {_id, keyHash (sha256 hex), user, organization, isActive, rateLimit}
  apikeys: (d) => [{
    type: 'apiKey', sha256: d.keyHash, userId: id(d.user), orgId: id(d.organization),
    active: d.isActive !== false, ...(d.rateLimit ? { rateLimitPerSec: d.rateLimit } : {}),
  }],
  // {_id, organization, isActive, trigger: {type: "webhook", webhookId}}:
  // one trigger line per webhook, grouping the workflows it starts.
  workflows: null, // grouped below
  // {_id, user, organization, isActive, process, prompt}
  outreachconfigurations: (d) => [{
    type: 'outreachConfig', configurationId: id(d._id), userId: id(d.user), orgId: id(d.organization),
    active: d.isActive !== false, processId: id(d.process) ?? null, promptId: id(d.prompt) ?? null,
  }],
  // {organization, dynamicProperties: [{name, category}]}
  organizationproperties: (d) => [{
    type: 'orgProperties', orgId: id(d.organization),
    properties: Object.fromEntries((d.dynamicProperties || []).map((p) => [p.name, p.category])),
  }],
};

async function main() {
  const [collection, file] = process.argv.slice(2);
  if (!(collection in mappers)) {
    console.error(`collection must be one of: ${Object.keys(mappers).join(', ')}`);
    process.exit(2);
  }
  const input = readline.createInterface({ input: file ? fs.createReadStream(file) : process.stdin });
  const triggers = new Map();
  for await (const line of input) {
    if (!line.trim()) continue;
    const doc = JSON.parse(line);
    if (collection === 'workflows') {
      if (doc.isActive === false || !doc.trigger || doc.trigger.type !== 'webhook') continue;
      const key = JSON.stringify([id(doc.organization), doc.trigger.webhookId]);
      if (!triggers.has(key)) triggers.set(key, []);
      triggers.get(key).push(id(doc._id));
    } else {
      for (const item of mappers[collection](doc)) process.stdout.write(JSON.stringify(item) + '\n');
    }
  }
  for (const [key, workflowIds] of triggers) {
    const [orgId, webhookId] = JSON.parse(key);
    process.stdout.write(JSON.stringify({ type: 'trigger', orgId, webhookId, workflowIds }) + '\n');
  }
}

main().catch((e) => {
  console.error(e.message);
  process.exit(1);
});
