#!/usr/bin/env node
// ASKMOJO storage from Node: @grpc/grpc-js and @grpc/proto-loader reading
// protos/ as they are (no generated code).
//
//   npm ci && node example.js [ADDRESS]
//
// ADDRESS (else ASKMOJO_ADDRESS, else METADATA_ADDRESS, else
// localhost:50051) is the metadata service, written as everywhere in the
// project: one HOST:PORT, several (meta-1:50051,meta-2:50051) or a gRPC
// target (dns:///metadata:50051); calls go round_robin over the replicas (see
// channelTarget). ASKMOJO_API_KEY, when set, goes out as
// `authorization: Bearer <key>` on every call. ASKMOJO_COLLECTION names the
// collection (default: a fresh name); it is deleted at the end.
//
// Creates a collection, streams documents through IngestDocuments, waits
// until they are INDEXED, searches with a metadata filter and decodes two
// error statuses (ALREADY_EXISTS; INVALID_ARGUMENT with its
// google.rpc.BadRequest field violations from grpc-status-details-bin).

'use strict';

const dns = require('node:dns');
const net = require('node:net');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const REPO = path.resolve(__dirname, '..', '..');
const address =
  process.argv[2] || process.env.ASKMOJO_ADDRESS || process.env.METADATA_ADDRESS || 'localhost:50051';
const apiKey = process.env.ASKMOJO_API_KEY || '';
const collection =
  process.env.ASKMOJO_COLLECTION || `node-example-${Date.now().toString(36)}`;
const INDEX_WAIT_MS = Number(process.env.ASKMOJO_INDEX_WAIT_MS || 60000);

// --- Loading the protos --------------------------------------------------
// keepCase: field names as in the .proto (snake_case); enums as their names;
// longs (int64) as strings so no precision is lost; oneofs: the set member's
// name in a virtual field (e.g. value.kind === 'int_value').
const packageDefinition = protoLoader.loadSync('askmojo/metadata/v1/metadata_service.proto', {
  includeDirs: [path.join(REPO, 'protos'), path.join(REPO, 'third_party', 'googleapis')],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const proto = grpc.loadPackageDefinition(packageDefinition);
const { MetadataService } = proto.askmojo.metadata.v1;

// google.rpc.Status and BadRequest, to decode grpc-status-details-bin. The
// status details are google.protobuf.Any; the two messages needed are small
// enough to declare here rather than vendoring error_details.proto.
const rpcTypes = protobuf.parse(`
  syntax = "proto3";
  package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message BadRequest {
    message FieldViolation { string field = 1; string description = 2; }
    repeated FieldViolation field_violations = 1;
  }
`, { keepCase: true }).root;
const StatusType = rpcTypes.lookupType('google.rpc.Status');
const BadRequestType = rpcTypes.lookupType('google.rpc.BadRequest');

// --- Connecting ----------------------------------------------------------
// Call credentials carry the API key; grpc-js only sends call credentials
// over a secure channel, so on plaintext the header is added per call.
function callMetadata() {
  const md = new grpc.Metadata();
  if (apiKey) md.set('authorization', `Bearer ${apiKey}`);
  return md;
}

// Several replicas: grpc-js balances an `ipv4:a:p,b:p` (or `ipv6:`) target
// itself, so a comma-separated list becomes one, its host names looked up
// once here (for names whose addresses change, give dns:///name:port, which
// grpc-js looks up again). One HOST:PORT, or a target with a scheme, passes
// through as it is.
async function channelTarget(address) {
  const hasScheme = /^(dns|ipv4|ipv6|unix|unix-abstract|vsock|xds):/.test(address) || address.includes('://');
  if (hasScheme || !address.includes(',')) return address;
  const ips = [];
  for (const part of address.split(',').map((p) => p.trim())) {
    const [, host, port] = part.match(/^\[?(.*?)\]?:(\d+)$/) || [];
    if (!host) throw new Error(`${JSON.stringify(part)}: expected HOST:PORT`);
    const found = net.isIP(host) ? [{ address: host }] : await dns.promises.lookup(host, { all: true });
    ips.push(...found.map((a) => ({ ip: a.address, port })));
  }
  // One target has one scheme: IPv4 unless there are only IPv6 addresses.
  const v4 = ips.filter((a) => net.isIPv4(a.ip));
  return v4.length
    ? `ipv4:${v4.map((a) => `${a.ip}:${a.port}`).join(',')}`
    : `ipv6:${ips.map((a) => `[${a.ip}]:${a.port}`).join(',')}`;
}

// round_robin over the replicas that are connected. The project's other
// clients add `healthCheckConfig` (calls only to replicas whose health reports
// askmojo.metadata.v1.MetadataService SERVING), but grpc-js has no
// client-side health checking: a replica that is up yet NOT_SERVING
// (starting, draining) still gets calls here.
const SERVICE_CONFIG = JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] });

let client; // set by main()

function deadline(seconds) {
  return new Date(Date.now() + seconds * 1000);
}

// A unary call as a promise: call('CreateCollection', {...}).
function call(method, request, seconds = 30) {
  return new Promise((resolve, reject) => {
    client[method](request, callMetadata(), { deadline: deadline(seconds) }, (err, reply) =>
      err ? reject(err) : resolve(reply),
    );
  });
}

// The code's name, e.g. ALREADY_EXISTS.
function codeName(code) {
  return Object.keys(grpc.status).find((k) => grpc.status[k] === code) || String(code);
}

// Field violations of an INVALID_ARGUMENT (google.rpc.BadRequest in the
// google.rpc.Status carried by the grpc-status-details-bin trailer).
function fieldViolations(err) {
  const raw = err.metadata && err.metadata.get('grpc-status-details-bin')[0];
  if (!raw) return [];
  const status = StatusType.decode(raw);
  return status.details
    .filter((d) => d.type_url.endsWith('/google.rpc.BadRequest'))
    .flatMap((d) => BadRequestType.decode(d.value).field_violations)
    .map((v) => ({ field: v.field, description: v.description }));
}

// --- Metadata values and filters -----------------------------------------
function value(v) {
  if (typeof v === 'string') return { string_value: v };
  if (typeof v === 'boolean') return { bool_value: v };
  if (Number.isInteger(v)) return { int_value: String(v) };
  return { double_value: v };
}

function metadata(obj) {
  return Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, value(v)]));
}

function plain(md) {
  return Object.fromEntries(
    Object.entries(md).map(([k, v]) => {
      const x = v[v.kind];
      return [k, v.kind === 'int_value' ? Number(x) : x];
    }),
  );
}

const cond = (key, op, v) => ({ condition: { key, op: `OPERATOR_${op}`, value: value(v) } });
const all = (...filters) => ({ all: { filters } });

// --- Ingesting through the bidirectional stream --------------------------
// One request per batch, one response per batch, in order. The stream is
// written with backpressure (write() returning false waits for 'drain').
function ingest(batches) {
  return new Promise((resolve, reject) => {
    const results = [];
    const stream = client.IngestDocuments(callMetadata(), { deadline: deadline(120) });
    stream.on('data', (response) => {
      if (response.status && response.status.code !== 0) {
        reject(new Error(`batch refused: ${codeName(response.status.code)} ${response.status.message}`));
        return;
      }
      results.push(...response.results);
    });
    stream.on('error', reject);
    stream.on('end', () => resolve(results));
    (async () => {
      for (const documents of batches) {
        if (!stream.write({ collection, documents })) {
          await new Promise((r) => stream.once('drain', r));
        }
      }
      stream.end();
    })().catch(reject);
  });
}

// Polls ListDocuments (no fixed sleep: the state decides) until no document
// of the collection is PENDING; fails after INDEX_WAIT_MS.
async function waitIndexed(expected) {
  const until = Date.now() + INDEX_WAIT_MS;
  for (let pause = 50; ; pause = Math.min(pause * 2, 1000)) {
    const reply = await call('ListDocuments', {
      collection,
      states: ['DOCUMENT_STATE_INDEXED'],
      page_size: 100,
    });
    if (reply.documents.length >= expected) return;
    if (Date.now() > until) {
      throw new Error(`${reply.documents.length}/${expected} documents indexed after ${INDEX_WAIT_MS} ms`);
    }
    await new Promise((r) => setTimeout(r, pause)); // polling interval, not ordering
  }
}

async function main() {
  const target = await channelTarget(address);
  client = new MetadataService(target, grpc.credentials.createInsecure(), {
    'grpc.service_config': SERVICE_CONFIG,
  });
  console.log(`metadata service at ${target}${apiKey ? ' (with API key)' : ''}`);

  const created = await call('CreateCollection', {
    name: collection,
    description: 'Node example',
  });
  console.log(`created collection ${created.name}: model ${created.model}, dimension ${created.dimension}`);

  try {
    // Error handling 1: the same name again.
    try {
      await call('CreateCollection', { name: collection });
      throw new Error('a second CreateCollection with the same name succeeded');
    } catch (err) {
      if (err.code !== grpc.status.ALREADY_EXISTS) throw err;
      console.log(`expected error: ${codeName(err.code)} (${err.code}): ${err.details}`);
    }

    // Error handling 2: INVALID_ARGUMENT, its field violations decoded.
    try {
      await call('Search', { collection, query: 'x', top_k: -1 });
      throw new Error('a Search with top_k=-1 succeeded');
    } catch (err) {
      if (err.code !== grpc.status.INVALID_ARGUMENT) throw err;
      const violations = fieldViolations(err);
      console.log(`expected error: ${codeName(err.code)} (${err.code}): ${err.details}`);
      for (const v of violations) console.log(`  field violation: ${v.field}: ${v.description}`);
      if (violations.length === 0) throw new Error('INVALID_ARGUMENT without field violations');
    }

    const docs = [
      { id: 'rust-2021', text: 'Rust guarantees memory safety without a garbage collector.', metadata: { lang: 'en', year: 2021, topic: 'programming' } },
      { id: 'python-2019', text: 'Python is a dynamically typed language popular in data science.', metadata: { lang: 'en', year: 2019, topic: 'programming' } },
      { id: 'go-2022', text: 'Go has goroutines and channels for concurrent programming.', metadata: { lang: 'en', year: 2022, topic: 'programming' } },
      { id: 'bread-2023', text: 'Sourdough bread needs a starter, flour, water and salt.', metadata: { lang: 'en', year: 2023, topic: 'cooking' } },
      { id: 'rust-fr-2023', text: 'Rust garantit la sûreté mémoire sans ramasse-miettes.', metadata: { lang: 'fr', year: 2023, topic: 'programming' } },
    ].map((d) => ({ id: d.id, text: d.text, metadata: metadata(d.metadata) }));

    const results = await ingest([docs.slice(0, 3), docs.slice(3)]);
    const failed = results.filter((r) => r.state === 'UPSERT_STATE_FAILED');
    if (results.length !== docs.length || failed.length) {
      throw new Error(`ingest: ${JSON.stringify(results)}`);
    }
    console.log(`ingested ${results.length} documents: ${results.map((r) => `${r.id}=${r.state.replace('UPSERT_STATE_', '')}`).join(', ')}`);

    await waitIndexed(docs.length);
    console.log(`all ${docs.length} documents indexed`);

    // Programming documents in English from 2020 on.
    const filter = all(cond('lang', 'EQ', 'en'), cond('topic', 'EQ', 'programming'), cond('year', 'GTE', 2020));
    // No mode: HYBRID, dense vectors and the keyword index fused by reciprocal
    // rank; each hit also says where each retriever ranked it (0: not found).
    const { hits, degraded, degraded_reason } = await call('Search', {
      collection,
      query: 'memory safe systems language',
      top_k: 5,
      filter,
    });
    if (degraded) console.log(`  keyword index only: ${degraded_reason}`);
    for (const h of hits) {
      const ranks = `dense #${h.dense_rank} keyword #${h.keyword_rank}`;
      console.log(`  hit ${h.document_id} score=${h.score.toFixed(4)} (${ranks}) ${JSON.stringify(plain(h.metadata))}`);
    }
    const ids = new Set(hits.map((h) => h.document_id));
    const expectedIds = ['rust-2021', 'go-2022'];
    if (ids.size !== expectedIds.length || !expectedIds.every((id) => ids.has(id))) {
      throw new Error(`search hits ${[...ids]} != ${expectedIds}`);
    }
    if (hits[0].document_id !== 'rust-2021') throw new Error(`best hit ${hits[0].document_id}`);
    console.log(`OK node example: collection ${collection}, ${docs.length} documents ingested and indexed, filtered search returned ${hits.length} hits`);
  } finally {
    await call('DeleteCollection', { name: collection }).catch((err) =>
      console.error(`cleanup failed: ${codeName(err.code)}: ${err.details}`),
    );
    client.close();
  }
}

main().catch((err) => {
  console.error(`FAILED: ${err.code !== undefined ? `${codeName(err.code)}: ${err.details}` : err.stack || err}`);
  process.exitCode = 1;
});
