import { createRequire } from "node:module";

declare const __ISTIO_VM_VERSION__: string | undefined;

/** The package version: injected by the build, read from package.json when running from source (tests). */
export function programVersion(): string {
  if (typeof __ISTIO_VM_VERSION__ === "string") return __ISTIO_VM_VERSION__;
  const require = createRequire(import.meta.url);
  return (require("../package.json") as { version: string }).version;
}
