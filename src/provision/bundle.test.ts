import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync, gzipSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { AgentError, ConfigError } from "../platform/errors.js";
import { nodeProcessRunner } from "../platform/process.js";
import type { BundleInput } from "./bundle.js";
import { planBundle, planBundleWithoutDeb, readBundle, renderBundle, settingsProblems } from "./bundle.js";
import { readTar, writeTar } from "./tar.js";

const input: BundleInput = {
  profile: "legacy",
  clusterEnv: "ISTIO_SERVICE_CIDR=10.96.0.0/12\nISTIO_CONTROL_PLANE=legacy\n",
  kubedns: "server=/svc.cluster.local/10.128.0.6\naddress=/istio-pilot/10.128.0.8\n",
  credentials: [
    { name: "root-cert.pem", content: "ROOT\n" },
    { name: "cert-chain.pem", content: "CHAIN\n" },
    { name: "key.pem", content: "KEY\n" },
  ],
  settings: [
    { key: "ISTIO_SVC_IP", value: "10.0.0.5" },
    { key: "ISTIO_INBOUND_PORTS", value: "8080,9090" },
  ],
  deb: {
    info: {
      file: "istio-vm-agent_1.2.3_amd64.deb",
      package: "istio-vm-agent",
      version: "1.2.3",
      architecture: "amd64",
    },
    data: Buffer.from("!<arch>\nnot really a deb"),
  },
  createdBy: "istio-vm test",
  createdAtMs: Date.UTC(2026, 10, 27),
};

function archive(members = planBundle(input)): Buffer {
  return renderBundle(members, { mtimeMs: input.createdAtMs, gzip: true });
}

/** Rewrites one member's data inside an uncompressed copy of the archive (same length, so headers stay valid). */
function tamper(gz: Buffer, member: string, from: string, to: string): Buffer {
  const tar = gunzipSync(gz);
  const members = readTar(tar, "t").map((m) =>
    m.name === member ? { ...m, data: Buffer.from(Buffer.from(m.data).toString().replace(from, to)) } : m,
  );
  return gzipSync(writeTar(members, { mtimeMs: 0, gzip: false }));
}

describe("bundle archive", () => {
  it("round-trips: every member verified, secrets 0600, settings and deb back", () => {
    const bundle = readBundle(archive(), "b.tgz");
    expect(bundle.info.profile).toBe("legacy");
    expect(bundle.clusterEnv).toBe(input.clusterEnv);
    expect(bundle.kubedns).toBe(input.kubedns);
    expect(bundle.credentials.get("key.pem")).toBe("KEY\n");
    expect(bundle.sidecarSettings).toEqual(input.settings);
    expect(bundle.deb?.info.version).toBe("1.2.3");
    const modes = Object.fromEntries(readTar(archive(), "b").map((m) => [m.name, m.mode]));
    expect(modes["key.pem"]).toBe(0o600);
    expect(modes["root-cert.pem"]).toBe(0o644);
  });

  it("is a real tar that GNU tar lists and sha256sum -c accepts", async () => {
    const run = async (cmd: string, args: string[], cwd?: string): Promise<string> => {
      const result = await nodeProcessRunner.run(cmd, args, cwd === undefined ? {} : { cwd });
      expect(result.code, result.stderr).toBe(0);
      return result.stdout;
    };
    const dir = mkdtempSync(join(tmpdir(), "bundle-test-"));
    try {
      const file = join(dir, "b.tgz");
      writeFileSync(file, archive());
      const listing = await run("tar", ["-tvzf", file]);
      expect(listing).toMatch(/^-rw------- root\/root .* key\.pem$/m);
      await run("tar", ["-xzf", file, "-C", dir]);
      expect(readFileSync(join(dir, "cluster.env"), "utf8")).toBe(input.clusterEnv);
      expect(statSync(join(dir, "key.pem")).mode & 0o777).toBe(0o600);
      const check = await run("sha256sum", ["-c", "SHA256SUMS"], dir);
      expect(check).toContain("key.pem: OK");
      expect(check).toContain("istio-vm-agent_1.2.3_amd64.deb: OK");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("stores the .deb as is (it is compressed already) and deflates the rest", () => {
    // Compressible on purpose: deflated again, these bytes would not appear verbatim and the archive would shrink.
    const data = Buffer.from(Array.from({ length: 200_000 }, (_, i) => String(i)).join(" "));
    const withDeb = { ...input, deb: { info: input.deb?.info ?? ({} as never), data } };
    const gz = archive(planBundle(withDeb));
    expect(gz.length).toBeGreaterThan(data.length);
    expect(gz.includes(data.subarray(500_000, 504_096))).toBe(true);
    expect(gz.includes(Buffer.from(input.clusterEnv))).toBe(false);
    expect(Buffer.from(readBundle(gz, "b.tgz").deb?.data ?? []).equals(data)).toBe(true);
  });

  it("has a variant without the .deb that verifies and holds everything else", () => {
    const original = readBundle(archive(), "b.tgz");
    const slim = readBundle(archive(planBundleWithoutDeb(original)), "slim.tgz");
    expect(slim.deb).toBeUndefined();
    expect(slim.info.deb).toBeNull();
    expect({ ...slim, info: undefined, deb: undefined }).toEqual({ ...original, info: undefined, deb: undefined });
    expect(slim.info.createdAt).toBe(original.info.createdAt);
  });

  it("names a tampered member", () => {
    const bad = tamper(archive(), "cluster.env", "10.96.0.0/12", "10.96.0.0/13");
    expect(() => readBundle(bad, "b.tgz")).toThrow(
      expect.objectContaining({ code: "BUNDLE_TAMPERED", subject: "cluster.env" }) as Error,
    );
  });

  it("rejects a member added after the fact and one that went missing", () => {
    const members = readTar(archive(), "b");
    const added = renderBundle([...members, { name: "evil.sh", data: Buffer.from("x"), mode: 0o755 }], {
      mtimeMs: 0,
      gzip: false,
    });
    expect(() => readBundle(added, "b")).toThrow(/evil\.sh is not listed/);
    const removed = renderBundle(
      members.filter((m) => m.name !== "key.pem"),
      { mtimeMs: 0, gzip: true },
    );
    expect(() => readBundle(removed, "b")).toThrow(/key\.pem is listed in SHA256SUMS but missing/);
  });

  it("refuses unsafe tar content: path traversal, links, corrupt headers", () => {
    const traversal = writeTar([{ name: "ok", data: Buffer.from("x"), mode: 0o644 }], { mtimeMs: 0, gzip: false });
    traversal.write("../etc/passwd\0", 0);
    // Fix the checksum so only the name is wrong.
    traversal.fill(0x20, 148, 156);
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += traversal[i] ?? 0;
    traversal.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148);
    expect(() => readTar(traversal, "t")).toThrow(/unsafe member name/);
    const corrupt = writeTar([{ name: "ok", data: Buffer.from("x"), mode: 0o644 }], { mtimeMs: 0, gzip: false });
    corrupt[0] = 0x50;
    expect(() => readTar(corrupt, "t")).toThrow(/checksum mismatch/);
    const link = writeTar([{ name: "ok", data: Buffer.from(""), mode: 0o644 }], { mtimeMs: 0, gzip: false });
    link[156] = 0x32;
    link.fill(0x20, 148, 156);
    sum = 0;
    for (let i = 0; i < 512; i++) sum += link[i] ?? 0;
    link.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148);
    expect(() => readTar(link, "t")).toThrow(/not a regular file/);
    expect(() => readTar(Buffer.from([0x1f, 0x8b, 1, 2, 3]), "t")).toThrow(AgentError);
  });

  it("validates settings with the registry, all problems at once", () => {
    expect(settingsProblems([{ key: "ISTIO_SVC_IP", value: "10.0.0.5" }])).toEqual([]);
    const problems = settingsProblems([
      { key: "ISTIO_SVC_IP", value: "not-an-ip" },
      { key: "ISTIO_INBOUND_PORTS", value: "70000" },
      { key: "NO_SUCH_THING", value: "1" },
      { key: "ISTIO_META_FOO", value: "bar" },
    ]);
    expect(problems.map((p) => p.subject)).toEqual(["ISTIO_SVC_IP", "ISTIO_INBOUND_PORTS", "NO_SUCH_THING"]);
    expect(() => planBundle({ ...input, settings: [{ key: "ISTIO_SVC_IP", value: "x" }] })).toThrow(ConfigError);
  });

  it("needs the credentials of its profile", () => {
    expect(() => planBundle({ ...input, credentials: [{ name: "root-cert.pem", content: "R" }] })).toThrow(
      /legacy bundle needs cert-chain\.pem, key\.pem/,
    );
    expect(() =>
      planBundle({ ...input, profile: "istiod", credentials: [{ name: "root-cert.pem", content: "R" }] }),
    ).toThrow(/istiod bundle needs istio-token/);
    const istiod = planBundle({
      ...input,
      profile: "istiod",
      credentials: [
        { name: "root-cert.pem", content: "R" },
        { name: "istio-token", content: "T" },
      ],
    });
    expect(istiod.find((m) => m.name === "istio-token")?.mode).toBe(0o600);
  });
});
