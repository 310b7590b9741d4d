/** `istio-vm certs status`: the workload certificate on this VM, checked as the agent checks a new one. */
import type { CommandModule } from "yargs";
import type { CertStatusReport } from "../certs/status.js";
import { certStatus, formatDuration } from "../certs/status.js";
import { renewContextFor, withCertAccess } from "./certs-access.js";
import type { CommandRuntime } from "./context.js";
import { renderJson } from "./render.js";

function when(iso: string, inSeconds: number): string {
  return `${iso.replace(/\.\d{3}Z$/, "Z")} (${inSeconds >= 0 ? `in ${formatDuration(inSeconds)}` : `${formatDuration(inSeconds)} ago`})`;
}

export function renderCertStatus(report: CertStatusReport): string {
  const rows: [string, string][] = [["identity", report.identity]];
  const cert = report.certificate;
  if (cert !== undefined) {
    if (cert.uris.join(",") !== report.identity)
      rows.push(["certified", cert.uris.join(", ") || "(no SPIFFE identity)"]);
    rows.push(["issuer", cert.issuer || "(empty)"]);
    rows.push(["serial", cert.serialNumber]);
    rows.push(["key", `${cert.keyType}; chain of ${cert.chainLength} certificate${cert.chainLength === 1 ? "" : "s"}`]);
    rows.push(["not before", cert.notBefore.replace(/\.\d{3}Z$/, "Z")]);
    rows.push(["not after", when(cert.notAfter, report.expiresInSeconds ?? 0)]);
  }
  if (report.renewal !== undefined) {
    const jitter = report.renewal.jitterSeconds > 0 ? ` ± ${formatDuration(report.renewal.jitterSeconds)}` : "";
    rows.push(["renewal", `${when(report.renewal.at, report.renewal.inSeconds)}${jitter}`]);
  }
  rows.push([
    "chain",
    report.chainOk
      ? `ok: verifies to ${report.paths.root}, identity matches, currently valid, key matches`
      : `NOT OK: ${report.problem ?? "unknown problem"}`,
  ]);
  rows.push(["files", `${report.paths.key}, ${report.paths.chain}`]);
  rows.push(["CA", `${report.caAddress} (${report.controlPlane})`]);
  if (report.token !== undefined) {
    const token = report.token;
    const state = !token.present
      ? "absent"
      : token.expiresAt === undefined
        ? "present"
        : `${token.expired === true ? "EXPIRED at" : "present, expires"} ${token.expiresAt.replace(/\.\d{3}Z$/, "Z")}`;
    rows.push(["token", `${token.path} (${state}; used only while there is no valid certificate)`]);
  }
  const width = Math.max(...rows.map(([k]) => k.length));
  return `${rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join("\n")}\n`;
}

export function certsStatusCommand(runtime: () => CommandRuntime): CommandModule<object, object> {
  return {
    command: "status",
    describe: "Show this VM's workload certificate: identity, issuer, validity, next renewal, chain check",
    builder: (y) =>
      y
        .example("$0 certs status", "check the certificate in OUTPUT_CERTS (/etc/certs)")
        .example("$0 certs status --json", "the same as JSON, e.g. for monitoring")
        .epilogue(
          "Checks, as the agent does before accepting a certificate: the chain leads to root-cert.pem, the leaf names " +
            "exactly spiffe://<TRUST_DOMAIN>/ns/<POD_NAMESPACE>/sa/<SERVICE_ACCOUNT>, it is valid now, and key.pem is " +
            "its key. The renewal time is NotBefore + (1 − SECRET_GRACE_PERIOD_RATIO) × lifetime; the agent adds a " +
            "random ± SECRET_GRACE_PERIOD_RATIO_JITTER. Exits 1 when the certificate is missing or fails a check.",
        ),
    handler: async () => {
      const rt = runtime();
      const { config, context } = await renewContextFor(rt);
      const report = await withCertAccess(config.OUTPUT_CERTS, () => certStatus(config, context));
      rt.out(rt.options.json ? renderJson(report) : renderCertStatus(report));
      if (!report.chainOk) rt.exitCode = 1;
    },
  };
}
