// Drives the orderfsm emulator with the official Centrifuge JavaScript client,
// exactly as Xsolla documents it. Prints one JSON object per line on stdout;
// reads commands ("quit") from stdin. Run by tests/test_emulator_conformance.py.
"use strict";

const { Centrifuge } = require("centrifuge");
const WebSocket = require("ws");
const readline = require("readline");

const [wsUrl, token, projectId] = process.argv.slice(2);

function emit(event, fields, done) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n", done);
}

const client = new Centrifuge(wsUrl, {
  websocket: WebSocket,
  data: { auth: token, project_id: Number(projectId) },
  minReconnectDelay: 300,
  maxReconnectDelay: 600,
});

client.on("connecting", (ctx) => emit("connecting", { code: ctx.code, reason: ctx.reason }));
client.on("connected", (ctx) => emit("connected", { client: ctx.client }));
client.on("disconnected", (ctx) => emit("disconnected", { code: ctx.code, reason: ctx.reason }));
client.on("error", (ctx) => emit("error", { message: String(ctx.error && ctx.error.message) }));

client.on("subscribed", (ctx) => {
  emit("subscribed", {
    channel: ctx.channel,
    recoverable: ctx.recoverable,
    positioned: ctx.positioned,
    offset: ctx.streamPosition ? ctx.streamPosition.offset : null,
    epoch: ctx.streamPosition ? ctx.streamPosition.epoch : null,
    wasRecovering: ctx.wasRecovering,
    recovered: ctx.recovered,
  });
  // Exactly the call from Xsolla's "Get user order status" page.
  client.history(ctx.channel, { limit: -1, since: { offset: 0 }, reverse: false }).then(
    (resp) => {
      emit("history", {
        channel: ctx.channel,
        offset: resp.offset,
        epoch: resp.epoch,
        publications: resp.publications.map((p) => ({ data: p.data, offset: p.offset })),
      });
    },
    (err) => emit("history_error", { code: err.code, message: err.message }),
  );
});

client.on("publication", (ctx) => {
  emit("publication", { channel: ctx.channel, data: ctx.data, offset: ctx.offset });
});

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (line.trim() === "quit") {
    client.disconnect();
    emit("bye", {}, () => process.exit(0));
  }
});
rl.on("close", () => emit("bye", {}, () => process.exit(0)));

client.connect();
