/**
 * `istio-vm certs [SA] [NS]`: the bootstrap credentials of a VM, fetched on the admin side (setupMeshEx.sh
 * machineCerts; istioctl x workload entry configure for istiod).
 *
 * Subcommands: the VM-side certificate commands (`certs status`, `certs renew`, issue 4) go into CERTS_SUBCOMMANDS
 * below — one import and one entry each; the builder registers them, and `certs` without a subcommand fetches.
 */
import type { Argv, CommandModule } from "yargs";
import { AgentError } from "../platform/errors.js";
import { dnsLabel, dnsName, ValueError } from "../config/types.js";
import type { BootstrapBundle } from "../kube/bootstrap-certs.js";
import { fetchIstiodBootstrap, fetchLegacyCerts, writeBundle } from "../kube/bootstrap-certs.js";
import type { ControlPlaneProfile } from "../kube/profile.js";
import type { KubeConnector, ProfileArgs } from "./admin-options.js";
import { connectKube, profileFor, parseDurationFlag, withProfileOptions } from "./admin-options.js";
import { certsRenewCommand } from "./certs-renew.js";
import { certsStatusCommand } from "./certs-status.js";
import type { CommandRuntime } from "./context.js";
import { withFlagValues } from "./flag-values.js";
import type { KubeArgs } from "./kube-options.js";
import { KUBE_OPTIONS_EPILOGUE, withKubeOptions } from "./kube-options.js";
import { renderJson } from "./render.js";

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- each subcommand has its own argument type
type SubcommandFactory = (runtime: () => CommandRuntime) => CommandModule<object, any>;

/** `certs` subcommands (VM side: status, renew). Add a factory here; nothing else needs to change. */
export const CERTS_SUBCOMMANDS: readonly SubcommandFactory[] = [certsStatusCommand, certsRenewCommand];

interface CertsArgs extends KubeArgs, ProfileArgs {
  sa: string | undefined;
  ns: string | undefined;
  all: boolean;
  output: string;
  "trust-domain": string;
  "token-duration": string;
  audience: string;
  "secret-prefix": string;
}

export interface CertsReport {
  readonly profile: ControlPlaneProfile;
  readonly serviceAccount: string;
  readonly namespace: string;
  readonly files: readonly { readonly path: string; readonly mode: string }[];
  readonly root: BootstrapBundle["root"];
  readonly leaf?: BootstrapBundle["leaf"];
  readonly token?: BootstrapBundle["token"];
  readonly warnings: readonly string[];
}

function validName(flag: string, raw: string, type: typeof dnsLabel): string {
  try {
    return type.parse(raw);
  } catch (error) {
    if (!(error instanceof ValueError)) throw error;
    throw new AgentError({ code: "USAGE", message: `${flag}: ${error.message}`, subject: raw, kind: "usage" });
  }
}

export function certsCommand(
  runtime: () => CommandRuntime,
  connect: KubeConnector = connectKube,
): CommandModule<object, CertsArgs> {
  return {
    command: "certs [sa] [ns]",
    describe: "Fetch and verify a VM's bootstrap credentials (legacy: istio.<sa> PEMs; istiod: root cert + token)",
    builder: (y) => {
      let parser: Argv = y;
      for (const factory of CERTS_SUBCOMMANDS) parser = parser.command(withFlagValues(factory(runtime)));
      return withProfileOptions(withKubeOptions(parser as Argv<object>))
        .positional("sa", { type: "string", describe: 'service account (default "default")' })
        .positional("ns", { type: "string", describe: "its namespace (default: -n, else the context's namespace)" })
        .option("all", {
          type: "boolean",
          default: false,
          describe: "legacy: also cert-chain.pem and key.pem (the original's `all`), not only root-cert.pem",
        })
        .option("output", {
          alias: "o",
          type: "string",
          default: ".",
          describe: "directory to write into (created if missing); keys and tokens 0600, certificates 0644",
          requiresArg: true,
        })
        .option("trust-domain", {
          type: "string",
          default: "cluster.local",
          describe: "legacy: trust domain of the expected identity spiffe://<td>/ns/<ns>/sa/<sa>",
          requiresArg: true,
        })
        .option("token-duration", {
          type: "string",
          default: "1h",
          describe: "istiod: lifetime of the service-account token (istioctl's default is 1h)",
          requiresArg: true,
        })
        .option("audience", {
          type: "string",
          default: "istio-ca",
          describe: "istiod: audience of the token (istiod accepts istio-ca)",
          requiresArg: true,
        })
        .option("secret-prefix", {
          type: "string",
          default: "istio.",
          describe: "legacy: prefix of the per-service-account secret (ISTIO_SECRET_PREFIX)",
          requiresArg: true,
        })
        .epilogue(
          "legacy: reads secret istio.<sa> and, before writing anything, checks that key.pem belongs to the " +
            "certificate, the chain verifies to root-cert.pem, the identity is spiffe://<trust-domain>/ns/<ns>/sa/<sa>, " +
            "and the certificate is valid (a warning under half its lifetime). istiod: root-cert.pem from ConfigMap " +
            "istio-ca-root-cert in <ns>, and istio-token from a TokenRequest (audience istio-ca). Install them on the " +
            "VM in /etc/certs (owned by istio-proxy); istio-vm install does. " +
            KUBE_OPTIONS_EPILOGUE,
        )
        .example("$0 certs vm-sa shop --all -o out/", "legacy: root-cert.pem, cert-chain.pem, key.pem of shop/vm-sa")
        .example("$0 certs mysql-vm shop -o out/ --token-duration 2h", "istiod: root-cert.pem and istio-token");
    },
    handler: async (args) => {
      const rt = runtime();
      const client = await connect(rt, args);
      const serviceAccount = validName("service account", args.sa ?? "default", dnsName);
      const namespace = validName("namespace", args.ns ?? client.namespace, dnsLabel);
      const trustDomain = validName("--trust-domain", args["trust-domain"], dnsName);
      const detected = await profileFor(client, args);
      const now = rt.clock.now();
      let bundle: BootstrapBundle;
      if (detected.profile === "legacy") {
        bundle = await fetchLegacyCerts(client, {
          serviceAccount,
          namespace,
          all: args.all,
          trustDomain,
          secretPrefix: args["secret-prefix"],
          now,
        });
      } else {
        const tokenMs = parseDurationFlag("token-duration", args["token-duration"]);
        // The API server's minimum for a TokenRequest is 10 minutes.
        if (tokenMs < 600_000) {
          throw new AgentError({
            code: "USAGE",
            message: "--token-duration must be at least 10m (the API server's minimum)",
            subject: args["token-duration"],
            kind: "usage",
          });
        }
        if (args.all)
          rt.err("note: --all applies to the legacy profile; istiod VMs get their certificate from istiod\n");
        bundle = await fetchIstiodBootstrap(client, {
          serviceAccount,
          namespace,
          audience: args.audience,
          tokenSeconds: Math.round(tokenMs / 1000),
          now,
        });
      }
      const paths = await writeBundle(rt.fs, args.output, bundle.files);
      const report: CertsReport = {
        profile: detected.profile,
        serviceAccount,
        namespace,
        files: bundle.files.map((f, i) => ({ path: paths[i] ?? f.name, mode: `0${f.mode.toString(8)}` })),
        root: bundle.root,
        ...(bundle.leaf === undefined ? {} : { leaf: bundle.leaf }),
        ...(bundle.token === undefined ? {} : { token: bundle.token }),
        warnings: bundle.warnings,
      };
      for (const warning of bundle.warnings) rt.err(`warning: ${warning}\n`);
      if (rt.options.json) {
        rt.out(renderJson(report));
        return;
      }
      const lines = report.files.map((f) => `wrote ${f.path} (${f.mode})`);
      if (bundle.leaf !== undefined) {
        lines.push(`identity ${bundle.leaf.identity ?? "(none)"}, valid until ${bundle.leaf.notAfter}`);
      }
      if (bundle.token !== undefined)
        lines.push(`token for ${namespace}/${serviceAccount} expires ${bundle.token.expiresAt}`);
      rt.out(`${lines.join("\n")}\n`);
      rt.err(
        detected.profile === "legacy"
          ? "Please install them on the VM in /etc/certs; the directory and files must be owned by the 'istio-proxy' user.\n"
          : "Install root-cert.pem in /etc/certs and istio-token as /var/lib/istio/tokens/istio-token (ISTIO_TOKEN_FILE), owned by 'istio-proxy', the token 0600 (istio-vm install does both).\n",
      );
    },
  };
}
