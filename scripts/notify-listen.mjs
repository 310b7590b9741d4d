// Plays systemd's side of sd_notify for the demo: binds a datagram socket and prints every message it receives.
// Usage: node scripts/notify-listen.mjs SOCKET_PATH
// Uses the prebuilt node-unix-socket addon directly, as src/platform/unix-dgram.ts does.
import { EventEmitter } from "node:events";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const require = createRequire(import.meta.url);
const pkg = require.resolve(`node-unix-socket-${process.platform}-${process.arch}-gnu/package.json`);
const addon = { exports: {} };
process.dlopen(addon, join(dirname(pkg), `node-unix-socket.${process.platform}-${process.arch}-gnu.node`));

const events = new EventEmitter();
const socket = new addon.exports.DgramSocketWrap({ emit: events.emit.bind(events) });
socket.init(socket);
events.on("_data", (buf) => {
  const fields = buf.toString("utf8").split("\n").filter(Boolean);
  if (fields.length === 1 && fields[0] === "WATCHDOG=1") return; // every few seconds: not worth a line
  process.stdout.write(`  [systemd] ${fields.join("  ")}\n`);
});
socket.startRecv();
socket.bind(process.argv[2]);
process.on("SIGTERM", () => {
  socket.close();
  process.exit(0);
});
