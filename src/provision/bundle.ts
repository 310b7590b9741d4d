/**
 * The provisioning bundle: one tar(.gz) with everything a VM needs — cluster.env, kubedns, `hosts` (istiod with the
 * agent's DNS proxy: the control plane's names for /etc/hosts, src/provision/hosts-file.ts), the bootstrap
 * credentials, optional per-VM sidecar.env settings, the .deb — plus `bundle.json` (what is inside) and `SHA256SUMS`
 * (sha256 of every other member, in `sha256sum -c` format so it can also be checked by hand). Secrets are 0600
 * inside the archive; `install` refuses a bundle whose members do not match the manifest, naming the member.
 *
 * The manifest detects damage and tampering of members relative to each other; it is not a signature. Whoever can
 * replace the whole bundle can replace its manifest too: copy bundles over channels you trust (scp, cloud-init).
 */
import { createHash } from "node:crypto";
import { basename } from "node:path";
import type { EnvEntry } from "../config/env-file.js";
import { EnvFileError, parseEnvFile, renderEnvFile } from "../config/env-file.js";
import { VARIABLES, isMetadataName, isVariableName } from "../config/registry.js";
import { ValueError } from "../config/types.js";
import { PUBLIC_MODE, SECRET_MODE } from "../kube/bootstrap-certs.js";
import type { ControlPlaneProfile } from "../kube/profile.js";
import { AgentError, ConfigError } from "../platform/errors.js";
import type { ConfigProblem } from "../platform/errors.js";
import type { ProcessRunner } from "../platform/process.js";
import { HOSTS_NAME, parseHostsMember, renderHostsMember } from "./hosts-file.js";
import type { TarMember } from "./tar.js";
import { isSafeMemberName, readTar, writeTar } from "./tar.js";

export const MANIFEST_NAME = "SHA256SUMS";
export const INFO_NAME = "bundle.json";
export const BUNDLE_FORMAT = 1;
export const CLUSTER_ENV_NAME = "cluster.env";
export const SIDECAR_ENV_NAME = "sidecar.env";
export const KUBEDNS_NAME = "kubedns";
/** Bootstrap credentials, by the names the admin commands and the VM use. */
export const CREDENTIAL_NAMES = ["root-cert.pem", "cert-chain.pem", "key.pem", "istio-token"] as const;
export type CredentialName = (typeof CREDENTIAL_NAMES)[number];
export const SECRET_NAMES: ReadonlySet<string> = new Set(["key.pem", "istio-token"]);

export interface DebInfo {
  /** Member name inside the bundle (the .deb's file name). */
  readonly file: string;
  readonly package: string;
  readonly version: string;
  readonly architecture: string;
}

export interface BundleInput {
  readonly profile: ControlPlaneProfile;
  readonly clusterEnv: string;
  readonly kubedns: string;
  /** istiod with the DNS proxy: the `hosts` member (src/provision/hosts-file.ts); absent: no member. */
  readonly hosts?: string;
  readonly credentials: readonly { readonly name: CredentialName; readonly content: string }[];
  /** Per-VM settings written to sidecar.env on install; validated with the registry first. */
  readonly settings: readonly { readonly key: string; readonly value: string }[];
  readonly deb?: { readonly info: DebInfo; readonly data: Uint8Array };
  readonly createdBy: string;
  readonly createdAtMs: number;
}

export interface BundleInfo {
  readonly format: number;
  readonly profile: ControlPlaneProfile;
  readonly createdAt: string;
  readonly createdBy: string;
  readonly deb: DebInfo | null;
  readonly settings: Readonly<Record<string, string>>;
  readonly members: readonly { readonly name: string; readonly mode: string; readonly sha256: string }[];
}

export interface VerifiedBundle {
  readonly info: BundleInfo;
  readonly clusterEnv: string;
  readonly kubedns: string;
  /** The `hosts` member's lines (`IP name…`); undefined: the bundle has none. */
  readonly hosts: readonly string[] | undefined;
  readonly sidecarSettings: readonly { readonly key: string; readonly value: string }[];
  readonly credentials: ReadonlyMap<CredentialName, string>;
  readonly deb: { readonly info: DebInfo; readonly data: Uint8Array } | undefined;
}

export function sha256(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}

export function modeString(mode: number): string {
  return `0${(mode & 0o7777).toString(8)}`;
}

/** Problems with per-VM settings, each checked with the registry's type for that variable. */
export function settingsProblems(settings: readonly { key: string; value: string }[]): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const seen = new Set<string>();
  for (const { key, value } of settings) {
    if (seen.has(key)) problems.push({ subject: key, message: "given twice" });
    seen.add(key);
    if (isVariableName(key)) {
      try {
        VARIABLES[key].type.parse(value);
      } catch (error) {
        if (!(error instanceof ValueError)) throw error;
        problems.push({ subject: key, message: error.message });
      }
    } else if (!isMetadataName(key)) {
      problems.push({ subject: key, message: "unknown variable (`istio-vm config --help` lists them)" });
    }
  }
  return problems;
}

/** `KEY=VALUE` flag values → settings; a malformed one is a usage error. */
export function parseSettingFlags(values: readonly string[], flag: string): { key: string; value: string }[] {
  return values.map((raw) => {
    const eq = raw.indexOf("=");
    if (eq <= 0) {
      throw new AgentError({
        code: "USAGE",
        message: `${flag} ${raw}: expected KEY=VALUE`,
        subject: raw,
        kind: "usage",
        hint: `e.g. ${flag} ISTIO_INBOUND_PORTS=8080,9090`,
      });
    }
    return { key: raw.slice(0, eq), value: raw.slice(eq + 1) };
  });
}

function requiredCredentials(profile: ControlPlaneProfile, present: ReadonlySet<string>): string[] {
  const missing: string[] = [];
  if (!present.has("root-cert.pem")) missing.push("root-cert.pem");
  const pair = present.has("cert-chain.pem") && present.has("key.pem");
  if (profile === "legacy" && !pair) {
    for (const n of ["cert-chain.pem", "key.pem"]) if (!present.has(n)) missing.push(n);
  }
  if (profile === "istiod" && !present.has("istio-token") && !pair) missing.push("istio-token");
  return missing;
}

/** The members of a bundle, in archive order (pure). Throws a ConfigError for invalid settings. */
export function planBundle(input: BundleInput): TarMember[] {
  const problems = settingsProblems(input.settings);
  if (problems.length > 0) throw new ConfigError(problems, "fix the sidecar settings given on the command line");
  const missing = requiredCredentials(input.profile, new Set(input.credentials.map((c) => c.name)));
  if (missing.length > 0) {
    throw new AgentError({
      code: "BUNDLE_INPUT_MISSING",
      message: `a ${input.profile} bundle needs ${missing.join(", ")}`,
      subject: missing.join(", "),
      kind: "usage",
      hint:
        input.profile === "legacy"
          ? "legacy VMs need root-cert.pem, cert-chain.pem and key.pem (`istio-vm certs SA NS --all`)"
          : "istiod VMs need root-cert.pem and istio-token (`istio-vm certs SA NS`)",
    });
  }
  const body: TarMember[] = [];
  const text = (name: string, content: string, mode: number): TarMember => ({
    name,
    data: Buffer.from(content, "utf8"),
    mode,
  });
  body.push(text(CLUSTER_ENV_NAME, input.clusterEnv, PUBLIC_MODE));
  if (input.settings.length > 0) {
    body.push(
      text(
        SIDECAR_ENV_NAME,
        renderEnvFile(input.settings, { header: ["per-VM settings from `istio-vm bundle`; merged into sidecar.env"] }),
        PUBLIC_MODE,
      ),
    );
  }
  body.push(text(KUBEDNS_NAME, input.kubedns, PUBLIC_MODE));
  if (input.hosts !== undefined) body.push(text(HOSTS_NAME, input.hosts, PUBLIC_MODE));
  for (const name of CREDENTIAL_NAMES) {
    const credential = input.credentials.find((c) => c.name === name);
    if (credential !== undefined)
      body.push(text(name, credential.content, SECRET_NAMES.has(name) ? SECRET_MODE : PUBLIC_MODE));
  }
  if (input.deb !== undefined) {
    if (!isSafeMemberName(input.deb.info.file)) {
      throw new AgentError({
        code: "DEB_NAME_INVALID",
        message: `'${input.deb.info.file}' is not a usable file name inside a bundle`,
        subject: input.deb.info.file,
        kind: "usage",
        hint: "rename the .deb to <package>_<version>_<arch>.deb",
      });
    }
    body.push({ name: input.deb.info.file, data: input.deb.data, mode: PUBLIC_MODE, compressed: true });
  }
  const info: BundleInfo = {
    format: BUNDLE_FORMAT,
    profile: input.profile,
    createdAt: new Date(input.createdAtMs).toISOString(),
    createdBy: input.createdBy,
    deb: input.deb?.info ?? null,
    settings: Object.fromEntries(input.settings.map((s) => [s.key, s.value])),
    members: body.map((m) => ({ name: m.name, mode: modeString(m.mode), sha256: sha256(m.data) })),
  };
  const infoMember = text(INFO_NAME, `${JSON.stringify(info, null, 2)}\n`, PUBLIC_MODE);
  const listed = [infoMember, ...body];
  const manifest = listed.map((m) => `${sha256(m.data)}  ${m.name}\n`).join("");
  return [text(MANIFEST_NAME, manifest, PUBLIC_MODE), ...listed];
}

/**
 * The same bundle without its .deb (pure): what `setup` copies to a host that already has the package's version, so
 * the fleet's one bundle is re-planned once, not per host. Created-by and -at stay those of the original.
 */
export function planBundleWithoutDeb(bundle: VerifiedBundle): TarMember[] {
  return planBundle({
    profile: bundle.info.profile,
    clusterEnv: bundle.clusterEnv,
    kubedns: bundle.kubedns,
    ...(bundle.hosts === undefined ? {} : { hosts: renderHostsMember(bundle.hosts) }),
    credentials: CREDENTIAL_NAMES.flatMap((name) => {
      const content = bundle.credentials.get(name);
      return content === undefined ? [] : [{ name, content }];
    }),
    settings: bundle.sidecarSettings,
    createdBy: bundle.info.createdBy,
    createdAtMs: Date.parse(bundle.info.createdAt),
  });
}

/** The archive bytes: gzip unless the output name ends in `.tar`. */
export function renderBundle(members: readonly TarMember[], options: { mtimeMs: number; gzip: boolean }): Buffer {
  return writeTar(members, options);
}

function tampered(subject: string, member: string, message: string): AgentError {
  return new AgentError({
    code: "BUNDLE_TAMPERED",
    message: `${subject}: member ${member} ${message}`,
    subject: member,
    hint: "the bundle was changed or damaged after `istio-vm bundle` made it; nothing was installed — make and copy it again",
  });
}

function bundleError(subject: string, message: string, hint?: string): AgentError {
  return new AgentError({
    code: "BUNDLE_INVALID",
    message: `${subject}: ${message}`,
    subject,
    hint: hint ?? "make the bundle again with `istio-vm bundle`",
  });
}

/** Parses SHA256SUMS; every line must be `<64 hex>  <name>`. */
export function parseManifest(text: string, subject: string): Map<string, string> {
  const sums = new Map<string, string>();
  for (const [i, line] of text.split("\n").entries()) {
    if (line === "") continue;
    const match = /^([0-9a-f]{64}) [ *]([^\s/]+)$/.exec(line);
    if (match === null) throw bundleError(subject, `${MANIFEST_NAME} line ${i + 1} is malformed`);
    const [, hash = "", name = ""] = match;
    if (sums.has(name)) throw bundleError(subject, `${MANIFEST_NAME} lists ${name} twice`);
    sums.set(name, hash);
  }
  return sums;
}

function text(data: Uint8Array): string {
  return Buffer.from(data).toString("utf8");
}

/**
 * Reads and verifies a bundle: every member is listed in the manifest with the right sha256 and nothing listed is
 * missing; then the info, the required credentials and the settings are checked. Throws naming the first bad
 * member; returns only fully verified content.
 */
export function readBundle(archive: Uint8Array, subject: string): VerifiedBundle {
  const members = readTar(archive, subject);
  const byName = new Map(members.map((m) => [m.name, m]));
  const manifestMember = byName.get(MANIFEST_NAME);
  if (manifestMember === undefined) throw bundleError(subject, `no ${MANIFEST_NAME} manifest`);
  const sums = parseManifest(text(manifestMember.data), subject);
  for (const member of members) {
    if (member.name === MANIFEST_NAME) continue;
    const expected = sums.get(member.name);
    if (expected === undefined) throw tampered(subject, member.name, `is not listed in ${MANIFEST_NAME}`);
    const actual = sha256(member.data);
    if (actual !== expected) {
      throw tampered(subject, member.name, `does not match ${MANIFEST_NAME} (sha256 ${actual}, expected ${expected})`);
    }
  }
  for (const name of sums.keys()) {
    if (!byName.has(name)) throw tampered(subject, name, `is listed in ${MANIFEST_NAME} but missing`);
  }
  const infoMember = byName.get(INFO_NAME);
  if (infoMember === undefined) throw bundleError(subject, `no ${INFO_NAME}`);
  let info: BundleInfo;
  try {
    info = JSON.parse(text(infoMember.data)) as BundleInfo;
  } catch {
    throw bundleError(subject, `${INFO_NAME} is not JSON`);
  }
  if (info.format !== BUNDLE_FORMAT) {
    throw bundleError(
      subject,
      `bundle format ${String(info.format)} is not supported (this istio-vm reads format ${BUNDLE_FORMAT})`,
      "make the bundle with the same istio-vm version that installs it",
    );
  }
  if (!(["istiod", "legacy"] as readonly string[]).includes(info.profile)) {
    throw bundleError(subject, "unknown profile in bundle.json");
  }
  for (const m of info.members) {
    const member = byName.get(m.name);
    if (member === undefined) throw tampered(subject, m.name, `is described in ${INFO_NAME} but missing`);
    if (modeString(member.mode) !== m.mode) throw tampered(subject, m.name, `has mode ${modeString(member.mode)}`);
    if (SECRET_NAMES.has(m.name) && (member.mode & 0o077) !== 0) {
      throw tampered(subject, m.name, `is a secret but readable by others (mode ${modeString(member.mode)})`);
    }
  }
  const required = (name: string): string => {
    const member = byName.get(name);
    if (member === undefined) throw bundleError(subject, `no ${name}`);
    return text(member.data);
  };
  const credentials = new Map<CredentialName, string>();
  for (const name of CREDENTIAL_NAMES) {
    const member = byName.get(name);
    if (member !== undefined) credentials.set(name, text(member.data));
  }
  const missing = requiredCredentials(info.profile, new Set(credentials.keys()));
  if (missing.length > 0) throw bundleError(subject, `a ${info.profile} bundle needs ${missing.join(", ")}`);
  let sidecarSettings: EnvEntry[] = [];
  const sidecar = byName.get(SIDECAR_ENV_NAME);
  if (sidecar !== undefined) {
    try {
      sidecarSettings = parseEnvFile(text(sidecar.data), `${subject}:${SIDECAR_ENV_NAME}`);
    } catch (error) {
      if (!(error instanceof EnvFileError)) throw error;
      throw bundleError(subject, error.message);
    }
  }
  const hostsMember = byName.get(HOSTS_NAME);
  const hosts = hostsMember === undefined ? undefined : parseHostsMember(text(hostsMember.data), subject);
  let deb: VerifiedBundle["deb"];
  if (info.deb !== null) {
    const member = byName.get(info.deb.file);
    if (member === undefined) throw tampered(subject, info.deb.file, "is missing");
    deb = { info: info.deb, data: member.data };
  }
  return {
    info,
    clusterEnv: required(CLUSTER_ENV_NAME),
    kubedns: required(KUBEDNS_NAME),
    hosts,
    sidecarSettings: sidecarSettings.map((e) => ({ key: e.key, value: e.value })),
    credentials,
    deb,
  };
}

/** `<package>_<version>_<arch>.deb`, the name dpkg-name and our build give a package. */
export function debInfoFromName(path: string): Omit<DebInfo, "file"> | undefined {
  const match = /^([a-z0-9][a-z0-9+.-]+)_([^_]+)_([a-z0-9-]+)\.deb$/.exec(basename(path));
  if (match === null) return undefined;
  const [, pkg = "", version = "", architecture = ""] = match;
  return { package: pkg, version, architecture };
}

/** Package, version and architecture of a .deb: from `dpkg-deb --field` when available, else from its name. */
export async function readDebInfo(runner: ProcessRunner, path: string): Promise<DebInfo> {
  const file = basename(path);
  try {
    const result = await runner.run("dpkg-deb", ["--field", path, "Package", "Version", "Architecture"], {
      timeoutMs: 30_000,
    });
    if (result.code === 0) {
      const fields = new Map(
        result.stdout
          .split("\n")
          .map((l) => /^([A-Za-z-]+):\s*(.*)$/.exec(l))
          .filter((m): m is RegExpExecArray => m !== null)
          .map((m) => [m[1] ?? "", m[2] ?? ""]),
      );
      const pkg = fields.get("Package");
      const version = fields.get("Version");
      const architecture = fields.get("Architecture");
      if (pkg !== undefined && version !== undefined && architecture !== undefined) {
        return {
          file: `${pkg}_${version.replace(/^\d+:/, "")}_${architecture}.deb`,
          package: pkg,
          version,
          architecture,
        };
      }
    }
    throw new AgentError({
      code: "DEB_INVALID",
      message: `${path} is not a Debian package: ${result.stderr.trim() || "dpkg-deb could not read it"}`,
      subject: path,
      kind: "usage",
      hint: "pass the .deb made by `npm run package` with --deb",
    });
  } catch (error) {
    if (!(error instanceof AgentError) || error.code !== "COMMAND_NOT_FOUND") throw error;
  }
  const fromName = debInfoFromName(path);
  if (fromName === undefined) {
    throw new AgentError({
      code: "DEB_INVALID",
      message: `cannot tell the package and version of ${path}: dpkg-deb is not installed and the name is not <package>_<version>_<arch>.deb`,
      subject: path,
      kind: "usage",
    });
  }
  return { file, ...fromName };
}
