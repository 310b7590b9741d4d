/**
 * `npm start`'s walkthrough (scripts/demo.sh bundles this file with esbuild and runs it): the recipe of
 * test/e2e/recipe.ts printed to the terminal. `--profile legacy|istiod` (default legacy); `--loopback` runs the
 * unprivileged walkthrough (dev plane on loopback, no VM container) even as root — on the istiod profile it ends with
 * auto-registration and a health flip. Ctrl-C or SIGTERM runs the cleanup (namespaces, container, processes, temp
 * dirs) before exiting 130.
 */
import type { Profile } from "./recipe.js";
import { Cleanups, runRecipe } from "./recipe.js";

const args = process.argv.slice(2);
const at = args.indexOf("--profile");
const profileArg = at >= 0 ? args[at + 1] : "legacy";
if (profileArg !== "legacy" && profileArg !== "istiod") {
  process.stderr.write(`--profile: expected legacy or istiod, got ${String(profileArg)}\n`);
  process.exit(2);
}
const profile: Profile = profileArg;

const cleanups = new Cleanups();
const print = (text: string): void => {
  // Bold, green and red only on a terminal (ESC [ … m sequences stripped otherwise).
  process.stdout.write(
    process.stdout.isTTY ? text : text.replace(new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, "g"), ""),
  );
};
let interrupted = false;
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    if (interrupted) return;
    interrupted = true;
    print(`\n${signal}: cleaning up\n`);
    void cleanups
      .run((line) => {
        print(`${line}\n`);
      })
      .then(() => process.exit(130));
  });
}

const report = await runRecipe({ profile, print, cleanups, ...(args.includes("--loopback") ? { root: false } : {}) });
const skipped = report.steps.filter((s) => s.status === "skipped");
print(`\n\x1b[1m== summary\x1b[0m\n`);
for (const s of report.steps) {
  const mark = s.status === "ok" ? "\x1b[32m✓\x1b[0m" : s.status === "skipped" ? "–" : "\x1b[31m✗\x1b[0m";
  print(`   ${mark} ${s.title}${s.reason === undefined ? "" : `  (${s.status}: ${s.reason.split("\n")[0] ?? ""})`}\n`);
}
if (skipped.length > 0)
  print(`   ${String(skipped.length)} step(s) skipped: run as root (sudo npm start) for all of them.\n`);
// Exit now: the container's dispose leaves a fallback timer of its own running for a while.
process.exit(report.ok ? 0 : 1);
