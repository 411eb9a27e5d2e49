// fal's own JavaScript client (@fal-ai/client, unmodified) following requests by the status stream.
//
// Run by tests/test_fal_js_client.py against the emulator. fal-js has no host setting: it always
// builds https://queue.fal.run/... URLs, so its public `requestMiddleware` option rewrites that
// origin to FAL_QUEUE_RUN_HOST (the emulator, whose CA node trusts through NODE_EXTRA_CA_CERTS).
// FAL_KEY is read by fal-js itself.
//
// Usage: node stream_status.mjs ENDPOINT_ID INPUT_JSON
// Two requests: one by queue.submit + queue.streamStatus (events read as they come), one by
// subscribe({mode: "streaming"}) (fal-js adds up the log lines). Prints one JSON object.

import { fal } from "@fal-ai/client";

const [endpoint, inputText] = process.argv.slice(2);
const input = JSON.parse(inputText);
const queueOrigin = `https://${process.env.FAL_QUEUE_RUN_HOST}`;

fal.config({
  requestMiddleware: async (request) => ({
    ...request,
    url: request.url.replace(/^https:\/\/queue\.fal\.run/, queueOrigin),
  }),
});

const now = () => Date.now() / 1000;

async function downloaded(result) {
  const url = result.data.video?.url ?? result.data.audio?.url;
  const answer = await fetch(url);
  const body = new Uint8Array(await answer.arrayBuffer());
  return { url, status: answer.status, bytes: body.length };
}

async function streamed() {
  const { request_id: requestId } = await fal.queue.submit(endpoint, { input });
  const stream = await fal.queue.streamStatus(endpoint, { requestId, logs: true });
  const events = [];
  stream.on("data", (event) => {
    events.push({ status: event.status, at: now(), logs: (event.logs ?? []).map((line) => line.message) });
  });
  const done = await stream.done();
  const result = await fal.queue.result(endpoint, { requestId });
  return { requestId, events, done: done.status, file: await downloaded(result) };
}

async function subscribed() {
  const updates = [];
  const result = await fal.subscribe(endpoint, {
    input,
    mode: "streaming",
    logs: true,
    onQueueUpdate: (update) => {
      updates.push({ status: update.status, logs: (update.logs ?? []).map((line) => line.message) });
    },
  });
  return { requestId: result.requestId, updates, file: await downloaded(result) };
}

const [first, second] = await Promise.all([streamed(), subscribed()]);
process.stdout.write(JSON.stringify({ streamed: first, subscribed: second }) + "\n");
