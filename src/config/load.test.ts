import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { edgeText } from "../../test/support/config-arbitraries.js";
import { ConfigError } from "../platform/errors.js";
import { quoteEnvValue } from "./env-file.js";
import { agentProblems, configFilePaths, inboundExcludePorts, loadConfig, requireValid } from "./load.js";
import type { VariableName } from "./registry.js";
import { VARIABLE_NAMES, VARIABLES } from "./registry.js";

const CLUSTER = "/var/lib/istio/envoy/cluster.env";
const SIDECAR = "/var/lib/istio/envoy/sidecar.env";

describe("loadConfig", () => {
  it("uses the defaults of the istiod profile when nothing is set", async () => {
    const loaded = await loadConfig({ env: {}, fs: new MemoryFileSystem() });
    expect(loaded.problems).toEqual([]);
    expect(loaded.values.ISTIO_CONTROL_PLANE).toBe("istiod");
    expect(loaded.values.CA_ADDR).toEqual({ host: "istiod.istio-system.svc", port: 15012 });
    expect(loaded.values.ISTIO_SERVICE_CIDR).toEqual([]);
    expect(loaded.variables.CA_ADDR.source).toEqual({ kind: "default" });
  });

  it("derives addresses from the legacy profile and the control-plane namespace", async () => {
    const fs = new MemoryFileSystem({ [CLUSTER]: "ISTIO_CONTROL_PLANE=legacy\nISTIO_SYSTEM_NAMESPACE=mesh\n" });
    const { values } = await loadConfig({ env: {}, fs });
    expect(values.PILOT_ADDRESS).toEqual({ host: "istio-pilot.mesh", port: 8080 });
    // ENVOY_XDS_API defaults to v1 there: Envoy polls Pilot's v1 REST API, over its mTLS front 15003.
    expect(values.ENVOY_XDS_API).toBe("v1");
    expect(values.DISCOVERY_ADDRESS).toEqual({ host: "istio-pilot.mesh", port: 15003 });
    expect(values.CA_ADDR).toEqual({ host: "istio-ca", port: 8060 });
    expect(values.ISTIOD_SAN).toBe("istio-ca");
    const plain = await loadConfig({ env: { CONTROL_PLANE_AUTH_POLICY: "NONE" }, fs });
    expect(plain.values.DISCOVERY_ADDRESS).toEqual({ host: "istio-pilot.mesh", port: 8080 });
    const v3 = await loadConfig({ env: { ENVOY_XDS_API: "v3" }, fs });
    expect(v3.values.DISCOVERY_ADDRESS).toEqual({ host: "istio-pilot.mesh", port: 15011 });
    // v2 (Istio 0.8): ADS on Pilot's 15011 under mTLS, 15010 in plain text, as pilot-agent 0.8 chose the port.
    const v2 = await loadConfig({ env: { ENVOY_XDS_API: "v2" }, fs });
    expect(v2.problems).toEqual([]);
    expect(v2.values.DISCOVERY_ADDRESS).toEqual({ host: "istio-pilot.mesh", port: 15011 });
    const v2plain = await loadConfig({ env: { ENVOY_XDS_API: "v2", CONTROL_PLANE_AUTH_POLICY: "NONE" }, fs });
    expect(v2plain.values.DISCOVERY_ADDRESS).toEqual({ host: "istio-pilot.mesh", port: 15010 });
  });

  it("ENVOY_XDS_API: v3 on istiod by default; v1 or v2 there is a configuration error (istiod serves v3 only)", async () => {
    const fs = new MemoryFileSystem({});
    expect((await loadConfig({ env: {}, fs })).values.ENVOY_XDS_API).toBe("v3");
    const bad = await loadConfig({ env: { ENVOY_XDS_API: "v1" }, fs });
    expect(bad.problems.map((p) => `${p.subject}: ${p.message}`)).toEqual([
      "ENVOY_XDS_API: v1 is not served by istiod (xDS v3 only); use v3, or ISTIO_CONTROL_PLANE=legacy",
    ]);
    const typo = await loadConfig({ env: { ENVOY_XDS_API: "v4" }, fs });
    expect(typo.problems.map((p) => p.subject)).toEqual(["ENVOY_XDS_API"]);
  });

  it("precedence: environment > sidecar.env > cluster.env > default, with the source of each value", async () => {
    const fs = new MemoryFileSystem({
      [CLUSTER]: "ISTIO_INBOUND_PORTS=8080\nISTIO_SERVICE_CIDR=10.0.0.0/8\nTRUST_DOMAIN=a.example\n",
      [SIDECAR]: "# per VM\nISTIO_INBOUND_PORTS=3306\nTRUST_DOMAIN=b.example\n",
    });
    const loaded = await loadConfig({ env: { TRUST_DOMAIN: "c.example", PATH: "/bin" }, fs });
    expect(loaded.values.ISTIO_INBOUND_PORTS).toEqual([3306]);
    expect(loaded.variables.ISTIO_INBOUND_PORTS.source).toEqual({ kind: "file", file: SIDECAR, line: 2 });
    expect(loaded.values.ISTIO_SERVICE_CIDR).toEqual([{ family: 4, address: "10.0.0.0", prefix: 8 }]);
    expect(loaded.values.TRUST_DOMAIN).toBe("c.example");
    expect(loaded.variables.TRUST_DOMAIN.source).toEqual({ kind: "environment" });
  });

  it("reports every problem at once, with file:line", async () => {
    const fs = new MemoryFileSystem({
      [CLUSTER]: "ISTIO_SERVICE_CIDR=10.0.0.1/8,banana\nISTIO_CONTROL_PLANE=consul\n",
      [SIDECAR]: "ISTIO_INBOUND_PORTS=0,65536,http\nENVOY_PORT=15001\nSTATUS_PORT=15001\nBROKEN LINE\n",
    });
    const loaded = await loadConfig({ env: {}, fs });
    const text = loaded.problems.map((p) => `${p.where ?? ""} ${p.subject}: ${p.message}`);
    expect(text).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/sidecar\.env:4 sidecar\.env: /),
        expect.stringMatching(/cluster\.env:2 ISTIO_CONTROL_PLANE: 'consul' is not one of istiod, legacy/),
        expect.stringMatching(
          /cluster\.env:1 ISTIO_SERVICE_CIDR: '10\.0\.0\.1\/8' has host bits set.*'banana' is not a CIDR/,
        ),
        expect.stringMatching(
          /sidecar\.env:1 ISTIO_INBOUND_PORTS: port 0 is out of range.*port 65536 is out of range.*'http' is not a port/,
        ),
        expect.stringMatching(/STATUS_PORT: port 15001 is also ENVOY_PORT/),
      ]),
    );
    expect(() => requireValid(loaded)).toThrow(ConfigError);
  });

  it("accepts both exclude-port names of the original recipe and merges them", async () => {
    const fs = new MemoryFileSystem({
      [SIDECAR]: "ISTIO_INBOUND_PORTS=*\nISTIO_LOCAL_EXCLUDE_PORTS=23\nISTIO_INBOUND_EXCLUDE_PORTS=8081,23\n",
    });
    const { values } = await loadConfig({ env: {}, fs });
    expect(values.ISTIO_INBOUND_PORTS).toBe("*");
    expect(inboundExcludePorts(values)).toEqual([23, 8081]);
  });

  it("folds the ISTIO_CP_AUTH alias into CONTROL_PLANE_AUTH_POLICY and flags a conflict", async () => {
    const alias = await loadConfig({ env: {}, fs: new MemoryFileSystem({ [CLUSTER]: "ISTIO_CP_AUTH=NONE\n" }) });
    expect(alias.values.CONTROL_PLANE_AUTH_POLICY).toBe("NONE");
    expect(alias.variables.CONTROL_PLANE_AUTH_POLICY.via).toBe("ISTIO_CP_AUTH");
    const both = await loadConfig({
      env: {},
      fs: new MemoryFileSystem({ [CLUSTER]: "ISTIO_CP_AUTH=NONE\nCONTROL_PLANE_AUTH_POLICY=MUTUAL_TLS\n" }),
    });
    expect(both.problems.map((p) => p.message)).toEqual([expect.stringContaining("conflicts with ISTIO_CP_AUTH=NONE")]);
  });

  it("warns about unknown variables with a suggestion, and passes ISTIO_META_* through as metadata", async () => {
    const fs = new MemoryFileSystem({ [SIDECAR]: "ISTIO_INBOUND_PORT=80\nISTIO_META_DNS_AUTO_ALLOCATE=true\n" });
    const loaded = await loadConfig({ env: {}, fs });
    expect(loaded.warnings).toEqual([
      {
        subject: "ISTIO_INBOUND_PORT",
        where: `${SIDECAR}:1`,
        message: "unknown variable, ignored; did you mean ISTIO_INBOUND_PORTS?",
      },
    ]);
    expect(loaded.metadata["ISTIO_META_DNS_AUTO_ALLOCATE"]?.raw).toBe("true");
  });

  it("relocates every default path under ISTIO_VM_ROOT, but not explicit ones", async () => {
    const root = "/tmp/vm";
    const fs = new MemoryFileSystem({ [`${root}${SIDECAR}`]: "OUTPUT_CERTS=/srv/certs\n" });
    const env = { ISTIO_VM_ROOT: root };
    expect(configFilePaths(env).sidecar).toBe(`${root}${SIDECAR}`);
    const { values } = await loadConfig({ env, fs });
    expect(values.OUTPUT_CERTS).toBe("/srv/certs");
    expect(values.ISTIO_PROXY_CONFIG_DIR).toBe("/tmp/vm/etc/istio/proxy");
    expect(values.ISTIO_TOKEN_FILE).toBe("/tmp/vm/var/lib/istio/tokens/istio-token");
    expect(values.ENVOY_BINARY).toBe("/usr/local/bin/envoy");
  });

  it("the agent additionally needs cluster.env and ISTIO_SVC_IP", async () => {
    const loaded = await loadConfig({ env: {}, fs: new MemoryFileSystem() });
    expect(agentProblems(loaded).map((p) => p.subject)).toEqual(["cluster.env", "ISTIO_SVC_IP"]);
    const ok = await loadConfig({
      env: {},
      fs: new MemoryFileSystem({ [CLUSTER]: "", [SIDECAR]: "ISTIO_SVC_IP=10.0.0.5\n" }),
    });
    expect(agentProblems(ok)).toEqual([]);
  });

  it("rejects TPROXY with the reason", async () => {
    const fs = new MemoryFileSystem({ [SIDECAR]: "ISTIO_INBOUND_INTERCEPTION_MODE=TPROXY\n" });
    const { problems } = await loadConfig({ env: {}, fs });
    expect(problems.map((p) => p.message)).toEqual([expect.stringContaining("needs Envoy to run as root")]);
  });

  it("an IPv6 zone id is a problem with its file:line, in every variable that holds addresses (it used to throw)", async () => {
    const fs = new MemoryFileSystem({
      [CLUSTER]:
        "ISTIO_SERVICE_CIDR=fe80::%eth0/64\nISTIO_SERVICE_EXCLUDE_CIDR=fe80::1%eth0\nCA_ADDR=[fe80::1%eth0]:15012\n",
      [SIDECAR]: "ISTIO_SVC_IP=fe80::5%eth0\n",
    });
    const loaded = await loadConfig({ env: {}, fs });
    expect(loaded.problems.map((p) => `${p.where ?? ""} ${p.subject}: ${p.message}`)).toEqual([
      expect.stringMatching(
        /cluster\.env:1 ISTIO_SERVICE_CIDR: 'fe80::%eth0\/64' is not a CIDR: it has an IPv6 zone id/,
      ),
      expect.stringMatching(/cluster\.env:2 ISTIO_SERVICE_EXCLUDE_CIDR: 'fe80::1%eth0' is not a CIDR: .*zone id/),
      expect.stringMatching(/cluster\.env:3 CA_ADDR: .*zone id/),
      expect.stringMatching(/sidecar\.env:1 ISTIO_SVC_IP: 'fe80::5%eth0' is not an IP address: .*zone id/),
    ]);
  });

  it("a key set twice in one file: the last line wins, with a warning naming both lines", async () => {
    const fs = new MemoryFileSystem({
      [SIDECAR]: "ISTIO_INBOUND_PORTS=3306\nISTIO_SVC_IP=10.0.0.5\nISTIO_INBOUND_PORTS=8080\n",
      [CLUSTER]: "ISTIO_INBOUND_PORTS=9090\n",
    });
    const loaded = await loadConfig({ env: {}, fs });
    expect(loaded.values.ISTIO_INBOUND_PORTS).toEqual([8080]);
    expect(loaded.variables.ISTIO_INBOUND_PORTS.source).toEqual({ kind: "file", file: SIDECAR, line: 3 });
    // Set in both files is the layering working, not a mistake: only the repeat within sidecar.env is reported.
    expect(loaded.warnings).toEqual([
      {
        subject: "ISTIO_INBOUND_PORTS",
        where: `${SIDECAR}:3`,
        message: `set twice, on ${SIDECAR}:1 and on ${SIDECAR}:3; the last one is used`,
      },
    ]);
  });

  it("a file saved with a BOM and CRLF line ends loads like a plain one", async () => {
    const fs = new MemoryFileSystem({ [SIDECAR]: "\ufeffISTIO_SVC_IP=10.0.0.5\r\nISTIO_INBOUND_PORTS=3306,80\r\n" });
    const loaded = await loadConfig({ env: {}, fs });
    expect(loaded.problems).toEqual([]);
    expect(loaded.values.ISTIO_SVC_IP).toBe("10.0.0.5");
    expect(loaded.values.ISTIO_INBOUND_PORTS).toEqual([3306, 80]);
  });
});

describe("loadConfig properties", () => {
  const variable = fc.constantFrom(...VARIABLE_NAMES);

  fcTest.prop([edgeText], { numRuns: 200 })(
    "any text in every variable at once: loadConfig returns, each variable parsed or named in a problem, never throws",
    async (raw) => {
      const env = Object.fromEntries(VARIABLE_NAMES.map((name) => [name, raw]));
      const loaded = await loadConfig({ env, fs: new MemoryFileSystem() });
      for (const name of VARIABLE_NAMES) {
        const own = loaded.problems.filter((p) => p.subject === name);
        for (const p of own) expect(p.where).toBe("environment");
        if (own.length === 0) expect(loaded.values[name]).toEqual(VARIABLES[name].type.parse(raw));
      }
    },
  );

  fcTest.prop([variable, edgeText, fc.nat({ max: 3 })])(
    "any value in sidecar.env: a problem about it carries the file:line it is on",
    async (name: VariableName, raw, blankLines) => {
      const text = `\ufeff${"\n".repeat(blankLines)}${name}=${quoteEnvValue(raw.replaceAll("\0", ""), "always")}\n`;
      const loaded = await loadConfig({ env: {}, fs: new MemoryFileSystem({ [SIDECAR]: text }) });
      for (const p of loaded.problems.filter((q) => q.subject === name)) {
        expect(p.where).toBe(`${SIDECAR}:${blankLines + 1}`);
      }
    },
  );
});
