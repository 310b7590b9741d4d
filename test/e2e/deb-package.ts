/**
 * The .deb under test: `dist/istio-vm-agent_<version>_amd64.deb`, rebuilt with packaging/build-deb.sh when it is
 * missing or older than anything it is made from (`npm test` builds it just before, so this is then a no-op).
 * ISTIO_VM_DEB=PATH tests a given file instead.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = fileURLToPath(new URL("../..", import.meta.url));

export function packageVersion(): string {
  return (JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { version: string }).version;
}

export function debPath(): string {
  return process.env["ISTIO_VM_DEB"] ?? join(REPO, "dist", `istio-vm-agent_${packageVersion()}_amd64.deb`);
}

function newestMtime(path: string): number {
  const stat = statSync(path);
  if (!stat.isDirectory()) return stat.mtimeMs;
  let newest = stat.mtimeMs;
  for (const entry of readdirSync(path)) newest = Math.max(newest, newestMtime(join(path, entry)));
  return newest;
}

/** The path of an up-to-date .deb, building it first if needed (about 2–3 minutes). */
export function ensureDeb(): string {
  const deb = debPath();
  if (process.env["ISTIO_VM_DEB"] !== undefined) return deb;
  const inputs = ["src", "systemd", "packaging", "scripts/build.mjs", "package.json", "package-lock.json"];
  const newestInput = Math.max(
    ...inputs
      .map((p) => join(REPO, p))
      .filter(existsSync)
      .map(newestMtime),
  );
  if (existsSync(deb) && statSync(deb).mtimeMs >= newestInput) return deb;
  const build = spawnSync("bash", [join(REPO, "packaging/build-deb.sh")], { cwd: REPO, stdio: "inherit" });
  if (build.status !== 0) throw new Error(`packaging/build-deb.sh failed (exit ${build.status ?? build.signal})`);
  return deb;
}
