/**
 * The real kubectl clients the tests run against the dev API server: Debian 12's (package kubernetes-client, kubectl
 * 1.20), which scripts/test.sh extracts into DEBIAN_KUBECTL_ROOT, and whatever `kubectl` is on PATH when it is a
 * different build (a current one from upstream or a cloud SDK). Two real clients catch more than one: kubectl 1.20
 * validates `create -f` against `/openapi/v2`, the current one asks the server to validate (`/openapi/v3`).
 *
 * Locally a test without any kubectl skips; under CI=true it fails, and so does a CI run without Debian's client
 * (scripts/test.sh provides it), so the oldest supported client is always exercised there.
 */
import { execFileSync } from "node:child_process";
import { existsSync, realpathSync } from "node:fs";
import { join } from "node:path";

/** Where scripts/test.sh unpacks Debian's kubernetes-client .deb (`dpkg-deb -x`): it never touches /usr/bin. */
export const DEBIAN_KUBECTL_ROOT = "/var/cache/istio-vm-test/kubernetes-client";
export const DEBIAN_KUBECTL = join(DEBIAN_KUBECTL_ROOT, "usr/bin/kubectl");

export interface KubectlClient {
  /** Absolute path of the binary. */
  readonly path: string;
  /** `v1.20.2`, `v1.32.4-dispatcher`, … */
  readonly version: string;
  readonly minor: number;
  /** A short label for test names: `kubectl v1.20.2 (Debian kubernetes-client)`. */
  readonly label: string;
}

const inCi = process.env["CI"] === "true";

function onPath(name: string): string | undefined {
  try {
    return execFileSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" }).trim() || undefined;
  } catch {
    return undefined;
  }
}

function clientVersion(path: string): { version: string; minor: number } | undefined {
  try {
    const out = execFileSync(path, ["version", "--client", "-o", "json"], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
      env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: "/nonexistent" },
    });
    const info = (JSON.parse(out) as { clientVersion?: { gitVersion?: string; minor?: string } }).clientVersion;
    const minor = Number.parseInt(info?.minor ?? "", 10);
    if (info?.gitVersion === undefined || !Number.isInteger(minor)) return undefined;
    return { version: info.gitVersion, minor };
  } catch {
    return undefined;
  }
}

function findClients(): KubectlClient[] {
  const clients: KubectlClient[] = [];
  const seen = new Set<string>();
  const candidates: [string | undefined, string][] = [
    [existsSync(DEBIAN_KUBECTL) ? DEBIAN_KUBECTL : undefined, "Debian kubernetes-client"],
    [onPath("kubectl"), "on PATH"],
  ];
  for (const [path, origin] of candidates) {
    if (path === undefined) continue;
    const real = realpathSync(path);
    if (seen.has(real)) continue;
    seen.add(real);
    const version = clientVersion(path);
    if (version === undefined) continue;
    clients.push({ path, ...version, label: `kubectl ${version.version} (${origin})` });
  }
  return clients;
}

export const KUBECTL_CLIENTS: readonly KubectlClient[] = findClients();

/**
 * Undefined when the tests can run, else why they skip. Under CI=true it throws instead: no kubectl at all, or no
 * Debian kubectl (scripts/test.sh must have unpacked it).
 */
export function kubectlRequirement(): string | undefined {
  let reason: string | undefined;
  if (KUBECTL_CLIENTS.length === 0)
    reason = `needs kubectl (scripts/test.sh unpacks Debian's kubernetes-client into ${DEBIAN_KUBECTL_ROOT})`;
  else if (inCi && !KUBECTL_CLIENTS.some((c) => c.path === DEBIAN_KUBECTL))
    reason = `needs Debian's kubectl at ${DEBIAN_KUBECTL} (scripts/test.sh unpacks it)`;
  if (reason !== undefined && inCi) throw new Error(`CI=true and this test ${reason}`);
  return reason;
}
