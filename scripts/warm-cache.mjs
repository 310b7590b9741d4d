// Run by scripts/build.mjs in a child process: compiles the bundle exactly as dist/istio-vm.cjs does, runs a few
// short commands with it (output discarded), then writes V8's code cache for it. A cache made right after compiling
// holds only the functions V8 compiled eagerly (the bundle's top level); every other function is compiled from source
// at its first call in every process: yargs' parser, the configuration loader, the iptables planner. A cache made
// after these runs holds their bytecode too, so `istio-vm config` and `iptables apply` skip compiling them.
// Usage: node scripts/warm-cache.mjs <bundle file> <name the launcher compiles it under> <cache out> <root>
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import { Script } from "node:vm";

const [bundleFile, filename, cacheOut, root] = process.argv.slice(2);
const source = readFileSync(bundleFile, "latin1");
// The same wrapper as the launcher's (and Node's CommonJS loader's): the shebang line becomes a comment.
const script = new Script(
  "(function (exports, require, module, __filename, __dirname) { " + source.replace(/^#!/, "//") + "\n});",
  { filename },
);
const run = script.runInThisContext();

// Commands that read only files under ISTIO_VM_ROOT and print; each runs the whole bundle once more (a new module
// instance), the functions they compile are shared by the one script.
const COMMANDS = [["--version"], ["config"], ["iptables", "plan"], ["iptables", "apply", "--help"]];
process.env["ISTIO_VM_ROOT"] = root;
let next = 0;
function runNext() {
  if (process.exitCode !== undefined && process.exitCode !== 0) {
    process.stderr.write(`warm-cache: istio-vm ${COMMANDS[next - 1].join(" ")} exited ${process.exitCode}\n`);
    process.exit(1);
  }
  const args = COMMANDS[next++];
  if (args === undefined) {
    process.removeListener("beforeExit", onIdle);
    writeFileSync(cacheOut, script.createCachedData());
    return;
  }
  process.argv = [process.argv[0], filename, ...args];
  const bundle = { exports: {}, filename, id: filename, loaded: false };
  run(bundle.exports, createRequire(filename), bundle, filename, dirname(filename));
}
// The next command starts when the previous one has left nothing to do. From a timer: 'beforeExit' comes again only
// if its listener left the event loop something to run, and a command may finish in promise callbacks alone.
const onIdle = () => setImmediate(runNext);
process.on("beforeExit", onIdle);
runNext();
