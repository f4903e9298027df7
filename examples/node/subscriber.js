// Subscribe to an actstream label stream, validate each message against the JSON Schema, print one JSON
// object per line. Usage: node subscriber.js [ENDPOINT] [--topic T]... [--count N] [--until-end]
// Uses only the documented contract: multipart [topic, JSON], stream/schema.json.
"use strict";
const fs = require("fs");
const path = require("path");
const zmq = require("zeromq");
const Ajv2020 = require("ajv/dist/2020").default;

async function main() {
  const args = process.argv.slice(2);
  let endpoint = "tcp://127.0.0.1:5556";
  const topics = [];
  let count = 0;
  let untilEnd = false;
  let schemaPath = path.join(__dirname, "..", "..", "stream", "schema.json");
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--topic") topics.push(args[++i]);
    else if (args[i] === "--count") count = parseInt(args[++i], 10);
    else if (args[i] === "--until-end") untilEnd = true;
    else if (args[i] === "--schema") schemaPath = args[++i];
    else endpoint = args[i];
  }
  const validate = new Ajv2020({ strict: false }).compile(JSON.parse(fs.readFileSync(schemaPath, "utf8")));
  const sock = new zmq.Subscriber();
  sock.connect(endpoint);
  if (topics.length) topics.forEach((t) => sock.subscribe(t));
  else sock.subscribe();
  const lastSeq = {};
  let n = 0;
  for await (const [topicFrame, payload] of sock) {
    const topic = topicFrame.toString();
    if (topics.length && !topics.includes(topic)) continue; // ZeroMQ matches prefixes; topics are whole names
    const msg = JSON.parse(payload.toString());
    if (!validate(msg)) {
      console.error(`invalid message on ${topic}: ${JSON.stringify(validate.errors)}`);
      process.exitCode = 3;
      break;
    }
    if (msg.topic !== topic) {
      console.error(`topic frame ${topic} != payload topic ${msg.topic}`);
      process.exitCode = 3;
      break;
    }
    if (topic in lastSeq && msg.seq <= lastSeq[topic]) continue; // a late joiner's welcome, repeated to all
    if (topic in lastSeq && msg.seq !== lastSeq[topic] + 1) {
      console.error(`gap on ${topic}: ${lastSeq[topic]} -> ${msg.seq}`);
    }
    lastSeq[topic] = msg.seq;
    console.log(JSON.stringify(msg));
    n += 1;
    if ((count && n >= count) || (untilEnd && topic === "status" && msg.state === "end")) break;
  }
  sock.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
