/**
 * The Kubernetes connection options every admin command shares (--kubeconfig, --context, -n/--namespace) and the
 * one call that turns them into a KubeClient. Usage in a command factory:
 *
 *   builder: (y) => withKubeOptions(y).option(...),
 *   handler: async (args) => { const rt = runtime(); const kube = await kubeClientFor(rt, args); ... }
 */
import type { Argv } from "yargs";
import { createKubeClient } from "../kube/connect.js";
import type { HttpKubeClient } from "../kube/http-client.js";
import type { CommandRuntime } from "./context.js";

export interface KubeArgs {
  kubeconfig: string | undefined;
  context: string | undefined;
  namespace: string | undefined;
}

export const KUBE_OPTIONS_EPILOGUE =
  "Kubernetes access works as kubectl's: --kubeconfig, else every file in KUBECONFIG (merged), else ~/.kube/config; " +
  "client certificates, bearer tokens, token files and exec credential plugins (GKE, EKS, AKS) are supported.";

export function withKubeOptions<T>(y: Argv<T>): Argv<T & KubeArgs> {
  return y
    .option("kubeconfig", {
      type: "string",
      describe: "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)",
      requiresArg: true,
    })
    .option("context", {
      type: "string",
      describe: "kubeconfig context (default: its current-context)",
      requiresArg: true,
    })
    .option("namespace", {
      alias: "n",
      type: "string",
      describe: 'namespace (default: the context\'s namespace, else "default")',
      requiresArg: true,
    });
}

/** A KubeClient for the command's --kubeconfig/--context/--namespace, with the runtime's ports and logger. */
export function kubeClientFor(runtime: CommandRuntime, args: Partial<KubeArgs>): Promise<HttpKubeClient> {
  return createKubeClient({
    kubeconfig: args.kubeconfig,
    context: args.context,
    namespace: args.namespace,
    env: runtime.env,
    fs: runtime.fs,
    runner: runtime.runner,
    logger: runtime.logger,
  });
}
