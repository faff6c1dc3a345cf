'use strict';
// 7.2.1 项目源文件 — the Node-Web-API of the DLNNM case.
//
// A small JSON API over MongoDB, with Node's own http module and the official
// MongoDB driver (the `mongodb` npm package, the only dependency):
//   GET  /api/health      the API answers and MongoDB answers a ping
//   GET  /api/notes       the latest notes, newest first
//   POST /api/notes       store {"title": "...", "body": "..."}; answers 201 with the stored document
//   GET  /api/notes/:id   one stored document
// MONGO_URL says where MongoDB is. In this lab its host is `mongo`: the --link alias
// of the ambassador container (mongo-abassador), not the database itself.

const http = require('node:http');
const os = require('node:os');
const { MongoClient, ObjectId } = require('mongodb');

const PORT = Number(process.env.PORT || 3000);
const MONGO_URL = process.env.MONGO_URL;
const DB_NAME = process.env.MONGO_DB || 'dlnnm';
const MAX_BODY = 64 * 1024;

if (!MONGO_URL) {
  console.error('node-web-api: MONGO_URL is not set');
  process.exit(1);
}

// One connected client, made on first use. A failed connection is forgotten, so the
// next request tries again: the API may start before MongoDB is ready.
let connecting = null;
function database() {
  if (!connecting) {
    const client = new MongoClient(MONGO_URL, { serverSelectionTimeoutMS: 5000, appName: 'dlnnm-node-web-api' });
    connecting = client.connect().then(
      () => {
        console.log('node-web-api: connected to MongoDB');
        return client;
      },
      (err) => {
        connecting = null;
        client.close().catch(() => {});
        throw Object.assign(new Error(`MongoDB not reachable: ${err.message}`), { status: 503 });
      },
    );
  }
  return connecting.then((client) => client.db(DB_NAME));
}
const notes = async () => (await database()).collection('notes');

function send(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(data),
    'Cache-Control': 'no-store',
  });
  res.end(data);
}

function readJson(req) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(Object.assign(new Error('request body too large'), { status: 413 }));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}'));
      } catch {
        reject(Object.assign(new Error('body is not valid JSON'), { status: 400 }));
      }
    });
    req.on('error', reject);
  });
}

function text(value, name, max) {
  if (typeof value !== 'string' || value.trim() === '') {
    throw Object.assign(new Error(`${name} must be a non-empty string`), { status: 400 });
  }
  if (value.length > max) {
    throw Object.assign(new Error(`${name} is longer than ${max} characters`), { status: 400 });
  }
  return value.trim();
}

// the stored document as the API shows it: _id first, as a hex string
const show = (doc) => ({ _id: doc._id.toHexString(), title: doc.title, body: doc.body, createdAt: doc.createdAt, servedBy: doc.servedBy });

async function handle(req, res) {
  const url = new URL(req.url, 'http://localhost');
  const path = url.pathname.replace(/\/+$/, '') || '/';

  if (path === '/api/health' && req.method === 'GET') {
    const ping = await (await database()).command({ ping: 1 });
    return send(res, 200, { ok: ping.ok === 1, api: os.hostname(), mongo: 'reachable' });
  }

  if (path === '/api/notes' && req.method === 'GET') {
    const docs = await (await notes()).find({}).sort({ createdAt: -1 }).limit(100).toArray();
    return send(res, 200, docs.map(show));
  }

  if (path === '/api/notes' && req.method === 'POST') {
    const input = await readJson(req);
    const doc = {
      title: text(input.title, 'title', 200),
      body: input.body === undefined ? '' : String(input.body).slice(0, 2000),
      createdAt: new Date(),
      servedBy: os.hostname(),
    };
    const result = await (await notes()).insertOne(doc);
    doc._id = result.insertedId;
    res.setHeader('Location', `/api/notes/${doc._id.toHexString()}`);
    return send(res, 201, show(doc));
  }

  const one = path.match(/^\/api\/notes\/([^/]+)$/);
  if (one && req.method === 'GET') {
    if (!ObjectId.isValid(one[1]) || one[1].length !== 24) {
      return send(res, 400, { error: 'not a document id' });
    }
    const doc = await (await notes()).findOne({ _id: new ObjectId(one[1]) });
    return doc ? send(res, 200, show(doc)) : send(res, 404, { error: 'no such note' });
  }

  return send(res, 404, { error: `no route for ${req.method} ${path}` });
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    const status = err.status || 503;
    if (status >= 500) console.error(`node-web-api: ${req.method} ${req.url}: ${err.message}`);
    if (!res.headersSent) send(res, status, { error: err.message });
  });
});

server.listen(PORT, () => {
  console.log(`node-web-api: listening on :${PORT}, MongoDB at ${new URL(MONGO_URL).host}, database ${DB_NAME}`);
});
// connect now, to log the outcome early (a failure is retried on the next request)
database().catch((err) => console.error(`node-web-api: ${err.message} (will retry)`));

function stop(signal) {
  console.log(`node-web-api: ${signal}, shutting down`);
  server.close(() => {
    const closing = connecting ? connecting.then((c) => c.close(), () => {}) : Promise.resolve();
    closing.finally(() => process.exit(0));
  });
  setTimeout(() => process.exit(0), 5000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
