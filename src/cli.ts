/** Entry point of the `istio-vm` executable. */
import { main, realContext } from "./main.js";

main(process.argv.slice(2), realContext()).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`istio-vm: internal error: ${String(error)}\n`);
    process.exitCode = 1;
  },
);
