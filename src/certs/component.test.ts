/**
 * The certificate component inside the real agent frame (runAgent), configured only through cluster.env/sidecar.env
 * as on a VM, against the dev CA: READY=1 with the certificate's identity and expiry in STATUS=, a renewal on SIGHUP
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

let fixture: CertFixture | undefined;
afterEach(async () => {
  await fixture?.close();
  fixture = undefined;
});

describe("certificate component in the agent", () => {
  it.each(["legacy", "istiod"] as const)(
    "%s: READY=1 with identity and expiry in STATUS=, stops on SIGTERM",
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
      const notifier = new RecordingNotifier();
      const signals = new ManualSignals();
      const logs: string[] = [];
      const run = runAgent({
        env: { ISTIO_VM_ROOT: root },
        fs: nodeFileSystem,
        runner: nodeProcessRunner,
        clock: systemClock,
        logger: createLogger({ level: "debug", format: "plain", write: (l) => logs.push(l) }),
        notifier,
        signals,
        components: [certificateComponent],
        version: "0.0.0-test",
      });
      const ready = await Promise.race([
        notifier.waitFor("READY", "1"),
        run.then((code) => {
          throw new Error(`agent exited ${code} before READY=1:\n${logs.join("")}`);
        }),
      ]);
      expect(ready["STATUS"] ?? notifier.lastStatus()).toMatch(
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
});
