// Subscribe to an actstream label stream, validate each message against the JSON Schema, print one JSON
// object per line. Usage: node subscriber.js [ENDPOINT] [--topic T]... [--stream ID]... [--count N] [--until-end]
// --topic: a head (speech, activity, action) or status; --stream: a stream of `actstream serve`, whose topics
// are HEAD/ID/ (the closing slash keeps cam1 apart from cam10).
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
  const streams = [];
  let count = 0;
  let untilEnd = false;
  let schemaPath = path.join(__dirname, "..", "..", "stream", "schema.json");
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--topic") topics.push(args[++i]);
    else if (args[i] === "--stream") streams.push(args[++i]);
    else if (args[i] === "--count") count = parseInt(args[++i], 10);
    else if (args[i] === "--until-end") untilEnd = true;
    else if (args[i] === "--schema") schemaPath = args[++i];
    else endpoint = args[i];
  }
  const validate = new Ajv2020({ strict: false }).compile(JSON.parse(fs.readFileSync(schemaPath, "utf8")));
  const sock = new zmq.Subscriber();
  sock.connect(endpoint);
  // what to subscribe to (ZeroMQ prefixes) and which received topics to keep
  let prefixes = [""];
  let keep = () => true;
  if (topics.length && streams.length) {
    const exact = new Set(topics.flatMap((t) => streams.map((s) => `${t}/${s}/`)));
    prefixes = [...exact];
    keep = (topic) => exact.has(topic);
  } else if (streams.length) {
    keep = (topic) => topic.split("/").length === 3 && streams.some((s) => topic.endsWith(`/${s}/`));
  } else if (topics.length) {
    prefixes = topics;
    keep = (topic) => topics.some((t) => topic === t || (topic.startsWith(t + "/") && topic.split("/").length === 3));
  }
  prefixes.forEach((p) => (p ? sock.subscribe(p) : sock.subscribe()));
  const lastSeq = {};
  let n = 0;
  for await (const [topicFrame, payload] of sock) {
    const topic = topicFrame.toString();
    if (!keep(topic)) continue; // ZeroMQ matches prefixes; topics are whole names
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
