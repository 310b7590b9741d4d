import { describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import {
  HOSTS_BEGIN,
  HOSTS_END,
  findHostsBlocks,
  hostsLinesFromKubedns,
  parseHostsMember,
  planBundleHosts,
  withHostsBlock,
  withoutHostsBlock,
} from "./hosts-file.js";

const DEBIAN = "127.0.0.1\tlocalhost\n127.0.1.1\tvm1\n\n# The following lines are desirable for IPv6\n::1 localhost\n";
const KUBEDNS =
  "address=/istiod/192.0.2.10\naddress=/istiod.istio-system/192.0.2.10\naddress=/istiod.istio-system.svc/192.0.2.10\n";

describe("the hosts member", () => {
  it("maps each dialed name to the address kubedns gives it (longest address= domain wins), grouped per address", () => {
    const kubedns = `${KUBEDNS}address=/istiod-canary.istio-system.svc/192.0.2.11\nserver=/svc.cluster.local/192.0.2.53\n`;
    expect(
      hostsLinesFromKubedns(kubedns, ["istiod.istio-system.svc", "istiod-canary.istio-system.svc", "ca.example.com"]),
    ).toEqual({
      lines: ["192.0.2.10 istiod.istio-system.svc", "192.0.2.11 istiod-canary.istio-system.svc"],
      unmapped: ["ca.example.com"],
    });
  });

  it("is written only on istiod with the DNS proxy, for the names the configuration dials", async () => {
    const fs = new MemoryFileSystem({});
    const proxy = "ISTIO_CONTROL_PLANE=istiod\nISTIO_META_DNS_CAPTURE=true\n";
    expect(await planBundleHosts(fs, { clusterEnv: proxy, kubedns: KUBEDNS, settings: [] })).toEqual({
      hosts: "192.0.2.10 istiod.istio-system.svc\n",
      warnings: [],
    });
    // Per-VM settings count as the agent will read them: the CA by IP, Pilot's check by a name kubedns lacks.
    const mixed = await planBundleHosts(fs, {
      clusterEnv: proxy,
      kubedns: KUBEDNS,
      settings: [
        { key: "CA_ADDR", value: "192.0.2.99:15012" },
        { key: "PILOT_ADDRESS", value: "pilot.example.com:15012" },
        { key: "DISCOVERY_ADDRESS", value: "istiod.istio-system.svc:15012" },
      ],
    });
    expect(mixed.hosts).toBe("192.0.2.10 istiod.istio-system.svc\n");
    expect(mixed.warnings).toEqual([expect.stringContaining("pilot.example.com")]);
    for (const clusterEnv of [
      "ISTIO_CONTROL_PLANE=istiod\n",
      "ISTIO_CONTROL_PLANE=legacy\nISTIO_META_DNS_CAPTURE=true\n",
    ]) {
      expect((await planBundleHosts(fs, { clusterEnv, kubedns: KUBEDNS, settings: [] })).hosts).toBeUndefined();
    }
  });

  it("is checked when read: IP then names", () => {
    expect(parseHostsMember("# c\n192.0.2.10 istiod.istio-system.svc  istiod\n\n", "b.tgz")).toEqual([
      "192.0.2.10 istiod.istio-system.svc istiod",
    ]);
    expect(() => parseHostsMember("istiod 192.0.2.10\n", "b.tgz")).toThrow(/hosts line 1 is not "IP name…"/);
    expect(() => parseHostsMember("192.0.2.10\n", "b.tgz")).toThrow(/hosts line 1/);
  });
});

describe("the istio-vm block of /etc/hosts", () => {
  const lines = ["192.0.2.10 istiod.istio-system.svc"];

  it("is appended once, keeping the user's lines byte for byte; a second run changes nothing", () => {
    const added = withHostsBlock(DEBIAN, lines, "/etc/hosts");
    expect(added.startsWith(DEBIAN)).toBe(true);
    expect(added.slice(DEBIAN.length)).toBe(
      `${HOSTS_BEGIN}\n# the control plane's names for the istio-vm agent: replaced by \`istio-vm install\`, removed by \`istio-vm uninstall\`; add your own lines outside this block\n192.0.2.10 istiod.istio-system.svc\n${HOSTS_END}\n`,
    );
    expect(withHostsBlock(added, lines, "/etc/hosts")).toBe(added);
    expect(withoutHostsBlock(added, "/etc/hosts")).toBe(DEBIAN);
  });

  it("is replaced in place when an address changes, lines after it kept", () => {
    const added = `${withHostsBlock(DEBIAN, lines, "/etc/hosts")}10.1.1.1 db.internal\n`;
    const changed = withHostsBlock(added, ["192.0.2.77 istiod.istio-system.svc"], "/etc/hosts");
    expect(changed).toContain("192.0.2.77 istiod.istio-system.svc\n");
    expect(changed).not.toContain("192.0.2.10");
    expect(changed.endsWith(`${HOSTS_END}\n10.1.1.1 db.internal\n`)).toBe(true);
    expect(withoutHostsBlock(changed, "/etc/hosts")).toBe(`${DEBIAN}10.1.1.1 db.internal\n`);
  });

  it("follows CRLF line ends and a missing final newline", () => {
    const crlf = "127.0.0.1 localhost\r\n::1 localhost";
    const added = withHostsBlock(crlf, lines, "/etc/hosts");
    expect(added.startsWith(`${crlf}\r\n${HOSTS_BEGIN}\r\n`)).toBe(true);
    expect(added.endsWith(`192.0.2.10 istiod.istio-system.svc\r\n${HOSTS_END}\r\n`)).toBe(true);
    expect(added.replace(/\r\n/g, "").includes("\n")).toBe(false);
    // Removing the block leaves the newline that separated it: the user's lines are unchanged.
    expect(withoutHostsBlock(added, "/etc/hosts")).toBe(`${crlf}\r\n`);
    expect(withHostsBlock(undefined, lines, "/etc/hosts").startsWith(HOSTS_BEGIN)).toBe(true);
  });

  it("a line the user added inside the block goes with the block; a second block is dropped", () => {
    const added = withHostsBlock(DEBIAN, lines, "/etc/hosts");
    const edited = added.replace(`${HOSTS_END}\n`, `10.9.9.9 mine\n${HOSTS_END}\n`);
    const found = findHostsBlocks(edited);
    expect(found.kind === "found" && found.body.includes("10.9.9.9 mine")).toBe(true);
    expect(withHostsBlock(edited, lines, "/etc/hosts")).toBe(added);
    expect(withHostsBlock(`${added}${added.slice(DEBIAN.length)}`, lines, "/etc/hosts")).toBe(added);
  });

  it("refuses to guess where a block without its END line ends", () => {
    const broken = `${DEBIAN}${HOSTS_BEGIN}\n192.0.2.10 istiod.istio-system.svc\n`;
    expect(findHostsBlocks(broken)).toEqual({ kind: "unterminated", line: 6 });
    expect(() => withHostsBlock(broken, lines, "/etc/hosts")).toThrow(/line 6 has "# BEGIN istio-vm" but no/);
  });
});
