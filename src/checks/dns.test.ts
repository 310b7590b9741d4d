import { describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { loadConfig } from "../config/load.js";
import type { DnsClient, DnsOutcome } from "../platform/dns.js";
import { createLogger } from "../platform/logger.js";
import { nodeHttpClient } from "../platform/http.js";
import { nodeProcessRunner } from "../platform/process.js";
import { nodeTlsProber } from "../platform/tls.js";
import { systemClock } from "../platform/clock.js";
import type { CheckDeps } from "./check.js";
import { controlPlaneNames, dnsCheck, kubednsAddressFor, parseKubedns } from "./dns.js";
import { fakePorts } from "../../test/fakes/ports.js";
import { checkDepsFrom } from "./check.js";

const KUBEDNS = [
  "server=/svc.cluster.local/10.128.0.6",
  "address=/istio-mixer/10.128.0.7",
  "address=/istio-pilot/10.128.0.8",
  "address=/istio-ca/10.128.0.9",
  "address=/istio-mixer.istio-system/10.128.0.7",
  "address=/istio-pilot.istio-system/10.128.0.8",
  "address=/istio-ca.istio-system/10.128.0.9",
  "",
].join("\n");

const ROOT = "/vm";
const KUBEDNS_PATH = `${ROOT}/etc/dnsmasq.d/kubedns`;
const RESOLV = `${ROOT}/etc/resolv.conf`;

/** A DnsClient port answering from tables: what getaddrinfo and dnsmasq would say. */
class TableDns implements DnsClient {
  constructor(
    readonly system: Record<string, DnsOutcome>,
    readonly direct: Record<string, DnsOutcome>,
    readonly fallback: DnsOutcome = { ok: false, code: "ENOTFOUND", message: "not found" },
  ) {}
  lookupSystem(name: string): Promise<DnsOutcome> {
    return Promise.resolve(this.system[name] ?? this.fallback);
  }
  queryServer(name: string): Promise<DnsOutcome> {
    return Promise.resolve(this.direct[name] ?? this.fallback);
  }
}

const at = (...addresses: string[]): DnsOutcome => ({ ok: true, addresses });
const legacyAnswers = (): Record<string, DnsOutcome> => ({
  "istio-pilot": at("10.128.0.8"),
  "istio-mixer": at("10.128.0.7"),
  "istio-ca": at("10.128.0.9"),
  "istio-pilot.istio-system": at("10.128.0.8"),
  "istio-mixer.istio-system": at("10.128.0.7"),
  "istio-ca.istio-system": at("10.128.0.9"),
  "kubernetes.default.svc.cluster.local": at("10.96.0.1"),
});

async function deps(files: Record<string, string>, dns: DnsClient, profile = "legacy"): Promise<CheckDeps> {
  const fs = new MemoryFileSystem(files);
  const loaded = await loadConfig({ env: { ISTIO_VM_ROOT: ROOT, ISTIO_CONTROL_PLANE: profile }, fs });
  const ports = fakePorts({ env: { ISTIO_VM_ROOT: ROOT }, fs, runner: nodeProcessRunner, clock: systemClock, dns });
  return {
    ...checkDepsFrom(
      { ...ports, http: nodeHttpClient, tls: nodeTlsProber, hostname: () => "vm1" },
      { loaded, logger: createLogger({ level: "error", format: "plain", write: () => undefined }), timeoutMs: 1000 },
    ),
    version: "test",
  };
}

const signal = new AbortController().signal;

describe("kubedns parsing", () => {
  it("reads address= and server= lines and matches names as dnsmasq does (X and *.X, longest wins)", () => {
    const file = parseKubedns(`${KUBEDNS}# comment\naddress=/istio-pilot.istio-system.svc/10.0.0.1\n`);
    expect(file.servers).toEqual([{ domain: "svc.cluster.local", server: "10.128.0.6" }]);
    expect(kubednsAddressFor(file, "istio-pilot")).toBe("10.128.0.8");
    expect(kubednsAddressFor(file, "x.istio-pilot")).toBe("10.128.0.8");
    expect(kubednsAddressFor(file, "istio-pilot.istio-system.svc")).toBe("10.0.0.1");
    expect(kubednsAddressFor(file, "istio-pilotx")).toBeUndefined();
  });

  it("lists the profile's control-plane names in every form kubedns has", async () => {
    const legacy = await deps({}, new TableDns({}, {}));
    expect(controlPlaneNames(legacy.values)).toEqual([
      "istio-pilot",
      "istio-mixer",
      "istio-ca",
      "istio-pilot.istio-system",
      "istio-mixer.istio-system",
      "istio-ca.istio-system",
    ]);
    const istiod = await deps({}, new TableDns({}, {}), "istiod");
    expect(controlPlaneNames(istiod.values)).toEqual(["istiod", "istiod.istio-system", "istiod.istio-system.svc"]);
  });
});

describe("dns check", () => {
  it("passes when both resolvers agree with kubedns, and says which server answered what", async () => {
    const d = await deps(
      { [KUBEDNS_PATH]: KUBEDNS, [RESOLV]: "nameserver 127.0.0.1\n" },
      new TableDns(legacyAnswers(), legacyAnswers()),
    );
    const result = await dnsCheck(d).run(signal);
    expect(result.status).toBe("pass");
    expect(result.summary).toBe(
      "7/7 names resolve alike through the system resolver and 127.0.0.1:53, as kubedns says",
    );
    expect(result.details[0]).toBe(
      "ok   istio-pilot: system resolver 10.128.0.8; 127.0.0.1:53 10.128.0.8; kubedns 10.128.0.8",
    );
    expect(result.details[6]).toBe(
      "ok   kubernetes.default.svc.cluster.local: system resolver 10.96.0.1; 127.0.0.1:53 10.96.0.1; kubedns forwards to 10.128.0.6",
    );
  });

  it("blames resolv.conf when dnsmasq is right and the system resolver is not", async () => {
    const system = { ...legacyAnswers(), "istio-pilot": { ok: false, code: "ENOTFOUND", message: "" } as DnsOutcome };
    const d = await deps(
      { [KUBEDNS_PATH]: KUBEDNS, [RESOLV]: "nameserver 10.0.0.2\n" },
      new TableDns(system, legacyAnswers()),
    );
    const result = await dnsCheck(d).run(signal);
    expect(result.status).toBe("fail");
    expect(result.summary).toBe("1/7 names fail: istio-pilot");
    expect(result.hint).toBe(
      "the system resolver does not ask dnsmasq: /vm/etc/resolv.conf lists nameserver 10.0.0.2; put `nameserver 127.0.0.1` first (and keep dhclient/NetworkManager/systemd-resolved from rewriting it)",
    );
  });

  it("asks for a dnsmasq restart when dnsmasq answers differently from the kubedns file", async () => {
    const stale = { ...legacyAnswers(), "istio-ca": at("10.128.0.99") };
    const d = await deps({ [KUBEDNS_PATH]: KUBEDNS, [RESOLV]: "nameserver 127.0.0.1\n" }, new TableDns(stale, stale));
    const result = await dnsCheck(d).run(signal);
    expect(result.hint).toMatch(
      /^dnsmasq at 127\.0\.0\.1:53 answers 10\.128\.0\.99 for istio-ca, but .*kubedns says 10\.128\.0\.9: restart dnsmasq/,
    );
  });

  it("says dnsmasq cannot reach kube-dns when only the cluster name fails", async () => {
    const answers = {
      ...legacyAnswers(),
      "kubernetes.default.svc.cluster.local": { ok: false, code: "ESERVFAIL", message: "" } as DnsOutcome,
    };
    const d = await deps(
      { [KUBEDNS_PATH]: KUBEDNS, [RESOLV]: "nameserver 127.0.0.1\n" },
      new TableDns(answers, answers),
    );
    const result = await dnsCheck(d).run(signal);
    expect(result.hint).toMatch(
      /^dnsmasq could not get kubernetes\.default\.svc\.cluster\.local from kube-dns at 10\.128\.0\.6 .*answered ESERVFAIL/,
    );
  });

  it("says the kubedns file is missing before anything else when dnsmasq answers but knows nothing", async () => {
    const refused = { ok: false, code: "EREFUSED", message: "" } as DnsOutcome;
    const d = await deps({ [RESOLV]: "nameserver 127.0.0.1\n" }, new TableDns({}, {}, refused));
    const result = await dnsCheck(d).run(signal);
    expect(result.hint).toMatch(/^\/vm\/etc\/dnsmasq\.d\/kubedns is missing/);
  });
});
