/**
 * `setup --cloud-init`: user-data for VMs that install the bundle at first boot (fleets that outgrow SSH, instance
 * templates, autoscaling groups). cloud-init writes the bundle (base64, 0600, root) with `write_files` and runs the
 * same bootstrap as `setup` with `runcmd`: the bundle's .deb (checked against SHA256SUMS) when istio-vm is missing,
 * then `istio-vm install`, then the bundle is deleted. When the bundle has no ISTIO_SVC_IP, each VM takes the source
 * address of its default route (`ip -4 route get`, no packet is sent).
 */
import { renderYaml } from "../kube/yaml.js";

export const BUNDLE_PATH = "/var/lib/istio-vm-setup/bundle.tgz";
/** User-data size limits of common providers (bytes). */
export const USER_DATA_LIMITS: readonly { readonly provider: string; readonly bytes: number }[] = [
  { provider: "AWS EC2", bytes: 16 * 1024 },
  { provider: "Azure", bytes: 64 * 1024 },
  { provider: "Google Compute Engine", bytes: 256 * 1024 },
];

export interface CloudInitInput {
  readonly bundle: Uint8Array;
  readonly debMember: string | undefined;
  readonly bundleHasSvcIp: boolean;
  readonly comment: readonly string[];
}

export function firstBootScript(input: Pick<CloudInitInput, "debMember" | "bundleHasSvcIp">): string {
  const dir = BUNDLE_PATH.slice(0, BUNDLE_PATH.lastIndexOf("/"));
  const bootstrap =
    input.debMember === undefined
      ? [
          "if ! command -v istio-vm >/dev/null 2>&1; then",
          "  echo 'istio-vm setup: istio-vm is not installed and the bundle has no .deb' >&2; exit 3",
          "fi",
        ]
      : [
          "if ! command -v istio-vm >/dev/null 2>&1; then",
          `  tar -xzf bundle.tgz SHA256SUMS '${input.debMember}'`,
          `  grep '  ${input.debMember}$' SHA256SUMS | sha256sum -c --quiet -`,
          `  DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold '${input.debMember}'`,
          `  rm -f SHA256SUMS '${input.debMember}'`,
          "fi",
        ];
  const svcIp = input.bundleHasSvcIp
    ? ""
    : " --set \"ISTIO_SVC_IP=$(ip -4 route get 192.0.2.1 | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p')\"";
  return ["set -eu", `cd ${dir}`, ...bootstrap, `istio-vm install bundle.tgz${svcIp}`, "rm -f bundle.tgz", ""].join(
    "\n",
  );
}

export function renderCloudInit(input: CloudInitInput): string {
  return renderYaml(
    {
      write_files: [
        {
          path: BUNDLE_PATH,
          owner: "root:root",
          permissions: "0600",
          encoding: "b64",
          content: Buffer.from(input.bundle).toString("base64"),
        },
      ],
      runcmd: [["sh", "-c", firstBootScript(input)]],
    },
    // cloud-init reads user-data as cloud-config only when the first line is exactly `#cloud-config`.
    ["cloud-config", ...input.comment.map((c) => ` ${c}`)],
  );
}

/** Providers whose user-data limit the document exceeds. */
export function exceededLimits(bytes: number): string[] {
  return USER_DATA_LIMITS.filter((l) => bytes > l.bytes).map((l) => `${l.provider} (${l.bytes / 1024} KiB)`);
}
