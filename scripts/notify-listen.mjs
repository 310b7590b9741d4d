// Plays systemd's side of sd_notify for the demo: binds a datagram socket and prints every message it receives.
// Usage: node scripts/notify-listen.mjs SOCKET_PATH
import { DgramSocket } from "node-unix-socket";

const path = process.argv[2];
const socket = new DgramSocket();
socket.bind(path);
socket.on("data", (buf) => {
  const fields = buf.toString("utf8").split("\n").filter(Boolean);
  if (fields.length === 1 && fields[0] === "WATCHDOG=1") return; // every few seconds: not worth a line
  process.stdout.write(`  [systemd] ${fields.join("  ")}\n`);
});
process.on("SIGTERM", () => {
  socket.close();
  process.exit(0);
});
