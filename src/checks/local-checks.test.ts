import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, expect, it } from "vitest";
import { RecordingIptablesRunner, natDump } from "../../test/fakes/iptables-runner.js";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { loadConfig } from "../config/load.js";
import { createMeshCa } from "../devplane/mesh-ca.js";
import { planInterception } from "../intercept/planner.js";
import { restoreInput } from "../intercept/restore-input.js";
import { interceptionSettings } from "../intercept/settings.js";
import { systemClock } from "../platform/clock.js";
import type { Clock } from "../platform/clock.js";
import { nodeHttpClient } from "../platform/http.js";
import { createLogger } from "../platform/logger.js";
import type { ProcessRunner } from "../platform/process.js";
import { nodeProcessRunner } from "../platform/process.js";
import { certificateCheck } from "./certificate.js";
import type { CheckDeps } from "./check.js";
import { envoyCheck } from "./envoy.js";
import { interceptionCheck } from "./interception.js";
import { fakePorts } from "../../test/fakes/ports.js";
import { checkDepsFrom } from "./check.js";

const signal = new AbortController().signal;
const PASSWD = "istio-proxy:x:998:998::/var/lib/istio:/usr/sbin/nologin\n";

async function deps(
  env: Record<string, string>,
  files: Record<string, string>,
  more: { runner?: ProcessRunner; clock?: Clock } = {},
): Promise<CheckDeps> {
  const fs = new MemoryFileSystem(files);
  const loaded = await loadConfig({ env: { ISTIO_VM_ROOT: "/vm", ...env }, fs });
  expect(loaded.problems).toEqual([]);
  const ports = fakePorts({
    env: { ISTIO_VM_ROOT: "/vm" },
    fs,
    runner: more.runner ?? nodeProcessRunner,
    clock: more.clock ?? systemClock,
    http: nodeHttpClient,
    hostname: () => "vm1",
  });
  return checkDepsFrom(ports, {
    loaded,
    logger: createLogger({ level: "error", format: "plain", write: () => undefined }),
    timeoutMs: 2000,
  });
}

describe("certificate check", () => {
  it("passes with identity and time left; names the wrong identity; says when it expired", async () => {
    const ca = await createMeshCa();
    const good = await ca.issueKeyPair({ identity: ca.spiffeId("shop", "vm"), ttlMs: 72 * 3600_000 });
    const files = (pair: { chainPem: string; keyPem: string }): Record<string, string> => ({
      "/vm/etc/certs/root-cert.pem": ca.rootCertPem,
      "/vm/etc/certs/cert-chain.pem": pair.chainPem,
      "/vm/etc/certs/key.pem": pair.keyPem,
    });
    const env = { POD_NAMESPACE: "shop", SERVICE_ACCOUNT: "vm" };
    const ok = await certificateCheck(await deps(env, files(good))).run(signal);
    expect(ok.status).toBe("pass");
    expect(ok.summary).toMatch(/^spiffe:\/\/cluster\.local\/ns\/shop\/sa\/vm valid until \S+ \((2d|3d|71h) left\)$/);

    const other = await certificateCheck(await deps({ ...env, SERVICE_ACCOUNT: "db" }, files(good))).run(signal);
    expect(other.status).toBe("fail");
    expect(other.summary).toBe(
      "the certificate is for spiffe://cluster.local/ns/shop/sa/vm, expected spiffe://cluster.local/ns/shop/sa/db",
    );
    expect(other.hint).toMatch(/SERVICE_ACCOUNT=db/);

    const later: Clock = { ...systemClock, now: () => Date.now() + 80 * 3600_000 };
    const expired = await certificateCheck(await deps(env, files(good), { clock: later })).run(signal);
    expect(expired.summary).toMatch(/expired at/);
    expect(expired.hint).toMatch(/re-provision/);

    const missing = await certificateCheck(await deps(env, {})).run(signal);
    expect(missing.summary).toBe(
      "missing /vm/etc/certs/root-cert.pem, /vm/etc/certs/cert-chain.pem, /vm/etc/certs/key.pem",
    );
  });
});

describe("envoy check", () => {
  it("passes on 200 LIVE, explains PRE_INITIALIZING, and says Envoy is not running when nothing listens", async () => {
    let state = { status: 200, body: "LIVE\n" };
    const admin = createServer((req, res) => {
      res.writeHead(req.url === "/ready" ? state.status : 404).end(state.body);
    });
    await new Promise<void>((resolve) => admin.listen(0, "127.0.0.1", resolve));
    const port = (admin.address() as AddressInfo).port;
    try {
      const d = await deps({ ENVOY_ADMIN_PORT: String(port) }, {});
      expect((await envoyCheck(d).run(signal)).summary).toBe("Envoy ready (LIVE)");
      state = { status: 503, body: "PRE_INITIALIZING\n" };
      const waiting = await envoyCheck(d).run(signal);
      expect(waiting.summary).toBe("Envoy not ready: HTTP 503 PRE_INITIALIZING");
      expect(waiting.hint).toMatch(/see the discovery check/);
    } finally {
      await new Promise<void>((resolve) =>
        admin.close(() => {
          resolve();
        }),
      );
    }
    const gone = await envoyCheck(await deps({ ENVOY_ADMIN_PORT: String(port) }, {})).run(signal);
    expect(gone.summary).toBe(`no Envoy admin at 127.0.0.1:${port} (ECONNREFUSED)`);
    expect(gone.hint).toMatch(/^Envoy is not running/);
  });
});

describe("interception check", () => {
  const env = { ISTIO_INBOUND_PORTS: "8080", FORCE_IPTABLES_BINARY: "nft" };
  const files = { "/vm/etc/passwd": PASSWD };

  async function plannedLines(): Promise<string[]> {
    const d = await deps(env, files);
    const plan = planInterception(await interceptionSettings(d.values, d.users, d.fs));
    const table = plan.families.find((f) => f.family === 4)?.tables[0];
    return restoreInput(table)
      .split("\n")
      .filter((l) => /^[:-]/.test(l));
  }

  it("passes when the kernel holds exactly the plan, and lists the differences otherwise", async () => {
    const runner = new RecordingIptablesRunner();
    runner.saves.set("iptables-nft-save", natDump(await plannedLines()));
    runner.saves.set("ip6tables-nft-save", natDump());
    const ok = await interceptionCheck(await deps(env, files, { runner })).run(signal);
    expect(ok.status, ok.summary).toBe("pass");
    expect(ok.summary).toMatch(/^rules as planned \(\d+\)$/);

    runner.saves.set("iptables-nft-save", natDump());
    const missing = await interceptionCheck(await deps(env, files, { runner })).run(signal);
    expect(missing.status).toBe("fail");
    expect(missing.summary).toMatch(/^IPv4: \d+ missing$/);
    expect(missing.hint).toMatch(/istio-vm iptables show/);
  });

  it("asks for root when iptables cannot be read", async () => {
    const runner = new RecordingIptablesRunner();
    runner.saveFailures.set(
      "iptables-nft-save",
      "iptables-save v1.8.9 (nf_tables): Permission denied (you must be root)",
    );
    runner.saves.set("ip6tables-nft-save", natDump());
    const result = await interceptionCheck(await deps(env, files, { runner })).run(signal);
    expect(result.status).toBe("fail");
    expect(result.hint).toMatch(/CAP_NET_ADMIN/);
  });
});
