/**
 * The certificate component inside the real agent frame (runAgent), configured only through cluster.env/sidecar.env
 * as on a VM, against the dev CA: READY=1, then STATUS= "ready: …" with the certificate's identity and expiry, a renewal on SIGHUP
 * after `certs renew`-style replacement, and a clean stop. This is what the booted-Debian test sees through systemd.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ManualSignals, RecordingNotifier } from "../../test/fakes/notifier.js";
import type { CertFixture } from "../../test/support/cert-fixture.js";
import { NAMESPACE, SERVICE_ACCOUNT, createCertFixture } from "../../test/support/cert-fixture.js";
import { freePort } from "../../test/support/net.js";
import { runAgent } from "../agent/agent.js";
import { systemClock } from "../platform/clock.js";
import { nodeFileSystem } from "../platform/fs.js";
import { createLogger } from "../platform/logger.js";
import { nodeProcessRunner } from "../platform/process.js";
import { certificateComponent } from "./component.js";
import { nodeLinkFileSystem } from "../platform/links.js";
import { fakePorts } from "../../test/fakes/ports.js";

let fixture: CertFixture | undefined;
afterEach(async () => {
  await fixture?.close();
  fixture = undefined;
});

/** The real agent frame with only the certificate component, on the real file system under `root` (ISTIO_VM_ROOT). */
function startAgent(root: string): {
  notifier: RecordingNotifier;
  signals: ManualSignals;
  logs: string[];
  run: Promise<number>;
} {
  const notifier = new RecordingNotifier();
  const signals = new ManualSignals();
  const logs: string[] = [];
  const run = runAgent({
    ...fakePorts({
      env: { ISTIO_VM_ROOT: root },
      fs: nodeFileSystem,
      runner: nodeProcessRunner,
      clock: systemClock,
      links: nodeLinkFileSystem,
    }),
    logger: createLogger({ level: "debug", format: "plain", write: (l) => logs.push(l) }),
    notifier,
    signals,
    components: [certificateComponent],
    version: "0.0.0-test",
  });
  return { notifier, signals, logs, run };
}

describe("certificate component in the agent", () => {
  it.each(["legacy", "istiod"] as const)(
    "%s: READY=1, then STATUS= ready with identity and expiry, stops on SIGTERM",
    async (profile) => {
      fixture = await createCertFixture({ protocol: profile });
      await fixture.installPair({
        notBefore: new Date(Date.now() - 60_000),
        notAfter: new Date(Date.now() + 3600_000),
      });
      const root = join(fixture.dir, "vm");
      await mkdir(join(root, "var/lib/istio/envoy"), { recursive: true });
      await writeFile(
        join(root, "var/lib/istio/envoy/cluster.env"),
        `ISTIO_CONTROL_PLANE=${profile}\nCA_ADDR=127.0.0.1:${fixture.server.port}\n` +
          `ISTIOD_SAN=${profile === "legacy" ? "istio-ca" : "istiod.istio-system.svc"}\n` +
          `POD_NAMESPACE=${NAMESPACE}\nSERVICE_ACCOUNT=${SERVICE_ACCOUNT}\n`,
      );
      await writeFile(
        join(root, "var/lib/istio/envoy/sidecar.env"),
        `ISTIO_SVC_IP=10.0.0.5\nSTATUS_PORT=${await freePort()}\nOUTPUT_CERTS=${fixture.dir}\n`,
      );
      const { notifier, signals, logs, run } = startAgent(root);
      await notifier.waitFor("READY", "1");
      const ready = await Promise.race([
        notifier.waitForStatus(/^ready: /),
        run.then((code) => {
          throw new Error(`agent exited ${code} before READY=1:\n${logs.join("")}`);
        }),
      ]);
      expect(ready["STATUS"]).toMatch(
        new RegExp(
          `cert spiffe://cluster.local/ns/${NAMESPACE}/sa/${SERVICE_ACCOUNT} expires \\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\dZ`,
        ),
      );
      // Not due yet (1 h certificate, renewal at half): nothing was asked of the CA.
      expect(fixture.server.calls).toEqual([]);
      signals.raise("SIGTERM");
      expect(await run).toBe(0);
      expect(logs.join("")).not.toMatch(/-----BEGIN/);
    },
  );

  it("SIGHUP re-reads CA_ADDR (and SECRET_TTL) in the running loop: a wrong address fixed without a restart", async () => {
    fixture = await createCertFixture({ protocol: "legacy" });
    // Due at once (renewal at half of 90 s, 60 s of which have passed) and valid for another 30 s.
    await fixture.installPair({ notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 30_000) });
    const root = join(fixture.dir, "vm");
    await mkdir(join(root, "var/lib/istio/envoy"), { recursive: true });
    const cluster = (port: number, ttl: string): string =>
      `ISTIO_CONTROL_PLANE=legacy\nCA_ADDR=127.0.0.1:${port}\nISTIOD_SAN=istio-ca\nSECRET_TTL=${ttl}\n` +
      `POD_NAMESPACE=${NAMESPACE}\nSERVICE_ACCOUNT=${SERVICE_ACCOUNT}\n`;
    await writeFile(join(root, "var/lib/istio/envoy/cluster.env"), cluster(await freePort(), "1h"));
    await writeFile(
      join(root, "var/lib/istio/envoy/sidecar.env"),
      `ISTIO_SVC_IP=10.0.0.5\nSTATUS_PORT=${await freePort()}\nOUTPUT_CERTS=${fixture.dir}\n`,
    );
    const { notifier, signals, logs, run } = startAgent(root);
    await notifier.waitForStatus(/^ready: .*renewal failing \(unavailable\)/);
    expect(fixture.server.calls).toEqual([]);
    await writeFile(join(root, "var/lib/istio/envoy/cluster.env"), cluster(fixture.server.port, "2h"));
    signals.raise("SIGHUP");
    await expect.poll(() => fixture?.server.calls.map((c) => c.outcome), { timeout: 15_000 }).toEqual(["issued"]);
    await notifier.waitForStatus(/^ready: .*cert spiffe:\/\/\S+ expires \S+$/);
    expect(logs.join("")).toMatch(
      /certificate settings reloaded component=certs changed=ca,ttl ca=127\.0\.0\.1:\d+ ttl=2h/,
    );
    expect(logs.join("")).toMatch(/certificate renewed /);
    signals.raise("SIGTERM");
    expect(await run).toBe(0);
  });
});
