/**
 * Options and output handling shared by the admin generators (cluster-env, dnsmasq, certs, register): the
 * control-plane namespace and profile, and writing one generated file atomically or printing it.
 */
import { dirname, join } from "node:path";
import type { Argv } from "yargs";
import { AgentError } from "../platform/errors.js";
import type { FileSystem } from "../platform/fs.js";
import { duration, ValueError } from "../config/types.js";
import type { KubeClient } from "../kube/client.js";
import type { ControlPlaneProfile, DetectedProfile } from "../kube/profile.js";
import { DEFAULT_ISTIO_NAMESPACE, PROFILES, detectProfile, detectRevision } from "../kube/profile.js";
import type { KubeArgs } from "./kube-options.js";
import { kubeClientFor } from "./kube-options.js";
import type { CommandRuntime } from "./context.js";

export interface ProfileArgs {
  "istio-namespace": string;
  profile: ControlPlaneProfile | undefined;
  revision: string | undefined;
}

export function withProfileOptions<T>(y: Argv<T>): Argv<T & ProfileArgs> {
  return y
    .option("istio-namespace", {
      type: "string",
      default: DEFAULT_ISTIO_NAMESPACE,
      describe: "namespace of the Istio control plane",
      requiresArg: true,
    })
    .option("profile", {
      choices: PROFILES,
      describe: "control-plane generation; default: detected (Service istiod ⇒ istiod, istio-pilot ⇒ legacy)",
    })
    .option("revision", {
      type: "string",
      describe: "istiod revision (istioctl install --revision REV): use Service istiod-<REV>",
      requiresArg: true,
    });
}

export interface OutputArgs {
  output: string | undefined;
}

/** `-o/--output FILE` of a generator that prints its one public file unless told where to write it (see emitFile). */
export function withOutputOption<T>(y: Argv<T>): Argv<T & OutputArgs> {
  return y.option("output", {
    alias: "o",
    type: "string",
    describe: "write to FILE (atomically, mode 0644) instead of standard output",
    requiresArg: true,
  });
}

/** The profile from --revision (Service istiod-<rev> must exist), --profile, or detection. */
export async function profileFor(client: KubeClient, args: ProfileArgs): Promise<DetectedProfile> {
  if (args.revision !== undefined) {
    if (args.profile === "legacy") {
      throw new AgentError({
        code: "USAGE",
        message: "--revision applies to istiod; the legacy control plane has no revisions",
        kind: "usage",
      });
    }
    if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(args.revision)) {
      throw new AgentError({
        code: "USAGE",
        message: `--revision: '${args.revision}' is not a revision name`,
        kind: "usage",
      });
    }
    return detectRevision(client, args["istio-namespace"], args.revision);
  }
  return detectProfile(client, args["istio-namespace"], args.profile);
}

/** How a command gets its KubeClient; tests pass one that returns a fake. */
export type KubeConnector = (runtime: CommandRuntime, args: Partial<KubeArgs>) => Promise<KubeClient>;
export const connectKube: KubeConnector = kubeClientFor;

export function parseDurationFlag(flag: string, raw: string): number {
  try {
    return duration.parse(raw);
  } catch (error) {
    if (!(error instanceof ValueError)) throw error;
    throw new AgentError({ code: "USAGE", message: `--${flag}: ${error.message}`, subject: raw, kind: "usage" });
  }
}

/**
 * Checks, before any work, that a file can be written at `path`: not a directory, and its directory exists. A wrong
 * -o is then a usage error naming it, not an errno after minutes of work (or after a server started).
 */
export async function checkOutputPath(fs: FileSystem, path: string, flag: string): Promise<void> {
  const usage = (code: string, message: string, hint: string): AgentError =>
    new AgentError({ code, message: `${flag} ${path}: ${message}`, subject: path, kind: "usage", hint });
  const existing = await fs.stat(path);
  if (existing?.isDirectory === true) {
    throw usage("OUTPUT_IS_DIRECTORY", "is a directory", `give a file name, e.g. ${flag} ${join(path, "out")}`);
  }
  const parent = await fs.stat(dirname(path));
  if (parent?.isDirectory !== true) {
    throw usage(
      "OUTPUT_DIRECTORY_MISSING",
      `${dirname(path)} is not a directory`,
      "create the directory first, or write somewhere else",
    );
  }
}

/**
 * Writes a generated public file (0644) atomically to `path`, refusing a directory; "-" or no path prints it instead.
 * Returns the path written, or undefined when printed.
 */
export async function emitFile(
  runtime: CommandRuntime,
  options: { readonly path: string | undefined; readonly content: string; readonly fs?: FileSystem },
): Promise<string | undefined> {
  const { path, content } = options;
  if (path === undefined || path === "-") {
    if (!runtime.options.json) runtime.out(content);
    return undefined;
  }
  const fs = options.fs ?? runtime.fs;
  await checkOutputPath(fs, path, "-o");
  try {
    await fs.writeFileAtomic(path, content, { mode: 0o644 });
  } catch (error) {
    throw new AgentError({
      code: "OUTPUT_WRITE_FAILED",
      message: `cannot write ${path}: ${(error as Error).message}`,
      subject: path,
      hint: "check that the directory exists and is writable",
      cause: error,
    });
  }
  return path;
}
