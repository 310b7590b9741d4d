/**
 * The certificate loop on a fake clock against the dev CA over real TLS: the schedule, every fault (old pair stays,
 * loop keeps running), a CA outage longer than the renewal window, expiry with and without the token path, and the
 * loop's log lines scanned for key material and tokens.
 */
import { X509Certificate } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { FakeClock } from "../../test/fakes/fake-clock.js";
import type { CertFixture } from "../../test/support/cert-fixture.js";
import { createCertFixture } from "../../test/support/cert-fixture.js";
import type { AgentEvents } from "../agent/component.js";
import { MetricsRegistry } from "../agent/metrics.js";
import type { CaFaultKind } from "../devplane/ca-faults.js";
import { CA_FAULT_KINDS } from "../devplane/ca-faults.js";
import type { LogFields, Logger } from "../platform/logger.js";
import type { CaProtocol } from "./ca-client.js";
import type { CertificateLoopSettings } from "./loop.js";
import { CertificateLoop } from "./loop.js";
import { createCaClient } from "./ca-client.js";
import { createMeshCa } from "../devplane/mesh-ca.js";
import { MAX_TIMER_DELAY_MS, systemClock } from "../platform/clock.js";
import { freePort } from "../../test/support/net.js";
import type { BackoffPolicy } from "./schedule.js";
import { maxBackoffStep, nextRenewalAt } from "./schedule.js";

const BACKOFF: BackoffPolicy = { initialMs: 1000, maxMs: 8000, jitter: 0.2 };
const PEM = /-----BEGIN [A-Z ]+-----/;
const JWT = /eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\./;

/** A logger that keeps every line as given, before the redaction the real logger applies. */
class RawLogger implements Logger {
  readonly lines: string[];
  constructor(lines: string[] = []) {
    this.lines = lines;
  }
  #record(level: string, message: string, fields?: LogFields): void {
    this.lines.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`);
  }
  error(m: string, f?: LogFields): void {
    this.#record("error", m, f);
  }
  warn(m: string, f?: LogFields): void {
    this.#record("warn", m, f);
  }
  info(m: string, f?: LogFields): void {
    this.#record("info", m, f);
  }
  debug(m: string, f?: LogFields): void {
    this.#record("debug", m, f);
  }
  child(): Logger {
    return this;
  }
}

/** Seeded PRNG (mulberry32): jitter is exercised, runs are reproducible. */
function seeded(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Harness {
  fixture: CertFixture;
  clock: FakeClock;
  loop: CertificateLoop;
  metrics: MetricsRegistry;
  logger: RawLogger;
  /** Fake times at which certificates-changed was emitted. */
  changes: number[];
  /** What the loop reads at start and on reload(); tests replace `current` to change the configuration. */
  settings: { current: CertificateLoopSettings };
  controller: AbortController;
}

let harness: Harness | undefined;
afterEach(async () => {
  if (harness !== undefined) {
    harness.controller.abort();
    await harness.loop.stop();
    await harness.fixture.close();
  }
  harness = undefined;
});

async function setUp(options: {
  protocol: CaProtocol;
  clock?: FakeClock | typeof systemClock;
  lifetimeMs: number;
  token?: boolean;
  timeoutMs?: number;
  install?: boolean;
}): Promise<Harness> {
  // Whole seconds: X.509 validity has one-second resolution.
  const clock = (options.clock ?? new FakeClock(Math.floor(Date.now() / 1000) * 1000)) as FakeClock;
  const fixture = await createCertFixture({
    protocol: options.protocol,
    clock,
    ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
  });
  if (options.install !== false) {
    await fixture.installPair({
      notBefore: new Date(clock.now() - 60_000),
      notAfter: new Date(clock.now() - 60_000 + options.lifetimeMs),
    });
  }
  if (options.token === true) await fixture.writeToken();
  const metrics = new MetricsRegistry();
  const logger = new RawLogger();
  const changes: number[] = [];
  const events = {
    emit(event: string) {
      if (event === "certificates-changed") changes.push(clock.now());
    },
    on: () => () => undefined,
  } as unknown as AgentEvents;
  const settings: { current: CertificateLoopSettings } = {
    current: {
      context: fixture.context,
      renewal: { graceRatio: 0.5, graceJitter: 0 },
      reprovisionHint:
        "on the admin host run `istio-vm certs vm-sa vmns --all`, copy the files to this VM and run `istio-vm install`",
      caAddress: `127.0.0.1:${fixture.server.port}`,
    },
  };
  const loop = new CertificateLoop({
    settings: () => Promise.resolve(settings.current),
    backoff: BACKOFF,
    random: seeded(42),
    logger,
    metrics,
    events,
  });
  harness = { fixture, clock, loop, metrics, logger, changes, settings, controller: new AbortController() };
  return harness;
}

async function chainOnDisk(h: Harness): Promise<string> {
  return await readFile(join(h.fixture.dir, "cert-chain.pem"), "utf8");
}

function metric(h: Harness, name: string): string[] {
  return h.metrics
    .render()
    .split("\n")
    .filter((line) => line.startsWith(name));
}

function assertNoSecrets(h: Harness): void {
  const text = [...h.logger.lines, h.loop.status().summary].join("\n");
  expect(text).not.toMatch(PEM);
  expect(text).not.toMatch(JWT);
}

describe("renewal schedule (fake clock)", () => {
  it("sleeps until NotBefore + ½ lifetime, renews then, and schedules the next renewal from the new certificate", async () => {
    const h = await setUp({ protocol: "legacy", lifetimeMs: 180_000 });
    const start = h.clock.now();
    await h.loop.start(h.controller.signal);
    expect(h.loop.status()).toMatchObject({ ready: true });
    expect(h.loop.status().summary).toContain(h.fixture.identity);
    // NotBefore = start − 60 s, lifetime 180 s → renew at start + 30 s.
    expect(await h.clock.nextTimer()).toBe(start + 30_000);
    expect(Number(metric(h, "istio_vm_cert_expiry_seconds")[0]?.split(" ")[1])).toBe(120);
    const before = await chainOnDisk(h);

    h.clock.advanceTo(start + 30_000);
    const next = await h.clock.nextTimer();
    expect(h.changes).toEqual([start + 30_000]);
    const after = await chainOnDisk(h);
    expect(after).not.toBe(before);
    const cert = new X509Certificate(after);
    const expected = nextRenewalAt(
      { notBefore: new Date(cert.validFrom).getTime(), notAfter: new Date(cert.validTo).getTime() },
      { graceRatio: 0.5, graceJitter: 0 },
      () => 0.5,
    );
    expect(next).toBe(expected);
    expect(metric(h, "istio_vm_cert_renewals_total")).toEqual(["istio_vm_cert_renewals_total 1"]);
    assertNoSecrets(h);
  });

  it("renews at once on start when the installed certificate is already due", async () => {
    const h = await setUp({ protocol: "istiod", lifetimeMs: 80_000 });
    // NotBefore = now − 60 s, lifetime 80 s: the renewal time (now − 20 s) has passed.
    await h.loop.start(h.controller.signal);
    expect(h.changes).toHaveLength(1);
    expect(h.loop.status().ready).toBe(true);
  });

  it("fetches the first certificate with the token when none is installed (istiod)", async () => {
    const h = await setUp({ protocol: "istiod", lifetimeMs: 0, install: false, token: true });
    await h.loop.start(h.controller.signal);
    expect(h.changes).toHaveLength(1);
    expect(h.fixture.server.calls.at(-1)?.authenticatedBy).toBe("token");
    assertNoSecrets(h);
  });
});

describe.each(["legacy", "istiod"] as const)(
  "faults (%s): the old pair stays and the loop keeps running",
  (protocol) => {
    it.each(CA_FAULT_KINDS)("%s", async (kind: CaFaultKind) => {
      const h = await setUp({ protocol, lifetimeMs: 600_000, timeoutMs: 500 });
      await h.loop.start(h.controller.signal);
      const before = await chainOnDisk(h);
      h.fixture.server.fault = kind === "delay" ? { kind, delayMs: 2000 } : { kind };
      // Renewal due (start + 240 s), then two retries under the fault.
      for (let i = 0; i < 3; i++) await h.clock.runToNextTimer();
      await h.clock.nextTimer();
      expect(await chainOnDisk(h)).toBe(before);
      expect(h.changes).toEqual([]);
      expect(h.loop.status().ready).toBe(true);
      expect(h.loop.status().summary).toMatch(/renewal failing/);
      const reasons: Record<CaFaultKind, string> = {
        deny: "denied",
        delay: "deadline",
        unavailable: "unavailable",
        garbage: "invalid-response",
        "wrong-identity": "identity",
        expired: "expired",
        "foreign-chain": "chain",
      };
      expect(metric(h, "istio_vm_cert_renewal_failures_total")).toEqual([
        `istio_vm_cert_renewal_failures_total{reason="${reasons[kind]}"} 3`,
      ]);
      h.fixture.server.fault = undefined;
      await h.clock.runToNextTimer();
      await h.clock.nextTimer();
      expect(h.changes).toHaveLength(1);
      expect(await chainOnDisk(h)).not.toBe(before);
      expect(h.loop.status().summary).not.toMatch(/failing/);
      assertNoSecrets(h);
    });
  },
);

describe("CA outage longer than the renewal window", () => {
  it("legacy: retries through the window with capped backoff and renews within one backoff step of recovery", async () => {
    // Lifetime 600 s: renewal due at +240 s; the outage lasts from +0 to +500 s (past the renewal time by 260 s).
    const h = await setUp({ protocol: "legacy", lifetimeMs: 600_000 });
    const start = h.clock.now();
    await h.loop.start(h.controller.signal);
    h.fixture.server.fault = { kind: "unavailable" };
    let attempts = 0;
    while (h.clock.now() < start + 500_000) {
      await h.clock.runToNextTimer();
      attempts++;
    }
    expect(attempts).toBeGreaterThan(30);
    h.fixture.server.fault = undefined;
    const recoveredAt = h.clock.now();
    while (h.changes.length === 0) await h.clock.runToNextTimer();
    expect((h.changes[0] ?? Infinity) - recoveredAt).toBeLessThanOrEqual(maxBackoffStep(BACKOFF));
    expect(h.loop.status()).toMatchObject({ ready: true });
    assertNoSecrets(h);
  });

  it("istiod: the certificate expires during the outage; after recovery the token re-bootstraps it within one step", async () => {
    const h = await setUp({ protocol: "istiod", lifetimeMs: 300_000, token: true });
    const start = h.clock.now();
    await h.loop.start(h.controller.signal);
    h.fixture.server.fault = { kind: "unavailable" };
    while (h.clock.now() < start + 400_000) await h.clock.runToNextTimer();
    await h.clock.nextTimer();
    // Expired at start + 240 s: degraded, not ready, and the status says how to get out of it.
    expect(h.loop.status().ready).toBe(false);
    expect(h.loop.status().summary).toMatch(
      /^certificate expired at .*: CA 127\.0\.0\.1:\d+: UNAVAILABLE: .*; fix: check CA_ADDR \(127\.0\.0\.1:\d+\) and the network/,
    );
    expect(Number(metric(h, "istio_vm_cert_expiry_seconds")[0]?.split(" ")[1])).toBeLessThan(0);
    h.fixture.server.fault = undefined;
    const recoveredAt = h.clock.now();
    while (h.changes.length === 0) await h.clock.runToNextTimer();
    expect((h.changes[0] ?? Infinity) - recoveredAt).toBeLessThanOrEqual(maxBackoffStep(BACKOFF));
    expect(h.fixture.server.calls.at(-1)).toMatchObject({ authenticatedBy: "token", outcome: "issued" });
    expect(h.loop.status().ready).toBe(true);
    assertNoSecrets(h);
  });

  it("legacy: once expired, stays degraded naming the re-provision command, and picks up a re-installed pair", async () => {
    // Renewal due at +60 s, expiry at +180 s.
    const h = await setUp({ protocol: "legacy", lifetimeMs: 240_000 });
    const start = h.clock.now();
    await h.loop.start(h.controller.signal);
    expect(h.changes).toEqual([]);
    h.fixture.server.fault = { kind: "unavailable" };
    while (h.clock.now() < start + 250_000) await h.clock.runToNextTimer();
    h.fixture.server.fault = undefined;
    // The CA is back, but an expired certificate cannot authenticate to it.
    for (let i = 0; i < 3; i++) await h.clock.runToNextTimer();
    await h.clock.nextTimer();
    const status = h.loop.status();
    expect(status.ready).toBe(false);
    expect(status.summary).toContain("istio-vm certs vm-sa vmns --all");
    expect(status.summary).toContain("istio-vm install");
    expect(h.changes).toEqual([]);
    // The admin re-provisions: `istio-vm install` writes a fresh pair as plain files.
    const fresh = await h.fixture.mesh.issueKeyPair({ identity: h.fixture.identity, ttlMs: 3600_000 });
    await writeFile(join(h.fixture.dir, "key.pem"), fresh.keyPem, { mode: 0o600 });
    await writeFile(join(h.fixture.dir, "cert-chain.pem"), fresh.chainPem);
    await h.clock.runToNextTimer();
    await h.clock.nextTimer();
    expect(h.loop.status().ready).toBe(true);
    // Envoy must be told: the pair changed on disk.
    expect(h.changes).toHaveLength(1);
    assertNoSecrets(h);
  });
});

describe("reload", () => {
  it("wakes the loop to pick up a pair written by `istio-vm certs renew`, raising certificates-changed", async () => {
    const h = await setUp({ protocol: "istiod", lifetimeMs: 3600_000 });
    await h.loop.start(h.controller.signal);
    const renewAt = await h.clock.nextTimer();
    const fresh = await h.fixture.mesh.issueKeyPair({ identity: h.fixture.identity, ttlMs: 7200_000 });
    await h.fixture.context.store.accept(fresh, { expectedIdentity: h.fixture.identity, now: h.clock.now() });
    await h.loop.reload();
    // The loop re-reads the store at once (no time passes) and sleeps until the new pair's renewal time.
    let next = await h.clock.nextTimer();
    while (next === renewAt) next = await h.clock.nextTimer();
    expect(h.changes).toEqual([h.clock.now()]);
    expect(next).toBeGreaterThan(renewAt);
  });
});

describe("start and stop", () => {
  it("start waits, degraded, while no certificate can be had; stop ends it", async () => {
    const h = await setUp({ protocol: "istiod", lifetimeMs: 0, install: false });
    let started = false;
    const starting = h.loop.start(h.controller.signal).then(
      () => (started = true),
      () => undefined,
    );
    await h.clock.runToNextTimer();
    await h.clock.nextTimer();
    expect(started).toBe(false);
    expect(h.loop.status().summary).toMatch(/^no certificate: .*no token in .*; fix: re-provision: .*istio-vm certs/);
    await h.loop.stop();
    await starting;
    expect(started).toBe(false);
    expect(h.clock.pending).toBe(0);
  });
});

const DAY = 24 * 3600_000;

describe("long certificates (90 days, the legacy bootstrap's lifetime)", () => {
  it("fake clock: the loop waits 45 days in timers the real setTimeout honours, then renews once", async () => {
    const h = await setUp({ protocol: "legacy", lifetimeMs: 90 * DAY });
    const start = h.clock.now();
    await h.loop.start(h.controller.signal);
    // NotBefore = start − 60 s: renewal at start − 60 s + 45 days.
    const renewAt = start - 60_000 + 45 * DAY;
    let wakes = 0;
    while (h.clock.now() < renewAt) {
      await h.clock.runToNextTimer();
      wakes++;
    }
    // 45 days are two steps of 2^31−1 ms (~24.8 days), and nothing happened before the renewal time.
    expect(wakes).toBe(2);
    expect(h.clock.delays.every((d) => d <= MAX_TIMER_DELAY_MS)).toBe(true);
    expect(h.clock.delays.slice(0, 2)).toEqual([MAX_TIMER_DELAY_MS, renewAt - start - MAX_TIMER_DELAY_MS]);
    expect(h.logger.lines.filter((l) => l.startsWith("info certificate valid"))).toHaveLength(1);
    await h.clock.nextTimer();
    expect(h.fixture.server.calls).toHaveLength(1);
  });

  it("real clock: the loop goes to sleep once and stays asleep (it spun when setTimeout got 45 days)", async () => {
    const h = await setUp({ protocol: "legacy", lifetimeMs: 90 * DAY, clock: systemClock });
    await h.loop.start(h.controller.signal);
    // A short real observation: a spinning loop logs thousands of lines in this time.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(h.logger.lines.filter((l) => l.startsWith("info certificate valid"))).toHaveLength(1);
    expect(h.fixture.server.calls).toHaveLength(0);
  });
});

describe("readiness follows NotAfter, not the loop's schedule", () => {
  it("a certificate that expires while a retry sleeps is not ready from that instant, and STATUS= is told", async () => {
    // Lifetime 300 s: renewal due at +90 s, expiry at +240 s; the CA is down throughout.
    const h = await setUp({ protocol: "legacy", lifetimeMs: 300_000 });
    const start = h.clock.now();
    const notAfter = start - 60_000 + 300_000;
    let statusChanges = 0;
    const loop = new CertificateLoop({
      settings: () => Promise.resolve(h.settings.current),
      backoff: { initialMs: 100_000, maxMs: 100_000, jitter: 0 },
      random: () => 0.5,
      logger: h.logger,
      metrics: new MetricsRegistry(),
      events: {
        emit: (event: string) => {
          if (event === "status-changed") statusChanges++;
        },
      },
    });
    await h.loop.stop();
    h.loop = loop;
    h.fixture.server.fault = { kind: "unavailable" };
    await loop.start(h.controller.signal);
    await h.clock.runToNextTimer(); // renewal due at +90 s: fails, retry at +190 s
    await h.clock.runToNextTimer(); // fails again, retry at +290 s: after NotAfter
    await h.clock.nextTimer();
    expect(loop.status()).toMatchObject({ ready: true });
    expect(loop.status().summary).toMatch(/renewal failing \(unavailable\)/);
    // Time passes NotAfter by one second; nothing of the loop has run yet: readiness must already say no.
    h.clock.advanceTo(notAfter + 1000);
    expect(loop.status().ready).toBe(false);
    expect(loop.status().summary).toMatch(/EXPIRED at /);
    // The loop woke at NotAfter to tell the frame (STATUS=), and is degraded with the fix.
    const before = statusChanges;
    await h.clock.nextTimer();
    expect(statusChanges).toBeGreaterThan(before);
    expect(loop.status()).toMatchObject({ ready: false });
    expect(loop.status().summary).toMatch(/^certificate expired at .*fix: check CA_ADDR/);
    expect(h.logger.lines.some((l) => l.startsWith("error certificate expired while renewal was failing"))).toBe(true);
  });
});

describe("a CA whose serving certificate is signed by an unknown root", () => {
  it("counts reason=untrusted (not unavailable) and says so", async () => {
    const h = await setUp({ protocol: "istiod", lifetimeMs: 100_000 });
    const other = await createMeshCa();
    h.settings.current = {
      ...h.settings.current,
      context: {
        ...h.fixture.context,
        connect: () =>
          createCaClient("istiod", {
            address: { host: "127.0.0.1", port: h.fixture.server.port },
            serverName: "istiod.istio-system.svc",
            rootPem: other.rootCertPem,
            timeoutMs: 2000,
          }),
      },
    };
    // Renewal is due at once (lifetime 100 s, NotBefore 60 s ago): the first attempt fails, the pair stays.
    await h.loop.start(h.controller.signal);
    await h.clock.nextTimer();
    expect(metric(h, "istio_vm_cert_renewal_failures_total")).toEqual([
      'istio_vm_cert_renewal_failures_total{reason="untrusted"} 1',
    ]);
    expect(h.loop.status().summary).toMatch(/renewal failing \(untrusted\)/);
    // Once the pair has expired, the status names the fix.
    while (h.loop.status().ready) await h.clock.runToNextTimer();
    await h.clock.nextTimer();
    expect(h.loop.status().summary).toMatch(/is not trusted by .*root-cert\.pem/);
  });
});

describe("reload re-reads the settings", () => {
  it("a CA_ADDR fixed while the loop fails is used at once; a new SECRET_TTL and key type apply to that renewal", async () => {
    const h = await setUp({ protocol: "legacy", lifetimeMs: 3600_000 });
    const closed = await freePort();
    const good = h.settings.current;
    h.settings.current = {
      ...good,
      caAddress: `127.0.0.1:${closed}`,
      context: {
        ...good.context,
        connect: (rootPem) =>
          createCaClient("legacy", {
            address: { host: "127.0.0.1", port: closed },
            serverName: "istio-ca",
            rootPem,
            timeoutMs: 2000,
          }),
      },
    };
    const start = h.clock.now();
    await h.loop.start(h.controller.signal);
    // Renewal due at +29 min: the wrong address refuses.
    while (h.clock.now() < start + 29 * 60_000) await h.clock.runToNextTimer();
    await h.clock.nextTimer();
    expect(metric(h, "istio_vm_cert_renewal_failures_total")).toEqual([
      'istio_vm_cert_renewal_failures_total{reason="unavailable"} 1',
    ]);
    expect(h.fixture.server.calls).toHaveLength(0);
    // The admin fixes CA_ADDR, sets SECRET_TTL=2h and RSA keys, and reloads: no time passes.
    h.settings.current = {
      ...good,
      context: { ...good.context, ttlMs: 2 * 3600_000, keySpec: { type: "RSA", rsaBits: 2048 } },
    };
    const retryAt = await h.clock.nextTimer();
    await h.loop.reload();
    while (h.changes.length === 0) await h.clock.nextTimer();
    expect(h.clock.now()).toBeLessThan(retryAt);
    const cert = new X509Certificate(await chainOnDisk(h));
    expect(new Date(cert.validTo).getTime() - new Date(cert.validFrom).getTime()).toBe(2 * 3600_000 + 60_000);
    expect(cert.publicKey.asymmetricKeyType).toBe("rsa");
    expect(h.logger.lines.some((l) => /certificate settings reloaded .*"changed":"ca,ttl,keyType"/.test(l))).toBe(true);
  });
});
