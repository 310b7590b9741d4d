/**
 * How the agent's long-lived streams reach istiod (DISCOVERY_ADDRESS): TLS with the mesh root and the workload's
 * key and chain from OUTPUT_CERTS (read anew for every connection, so a renewal is used on the next one), the
 * server name ISTIOD_SAN, `clusterid`; the service-account token only while there is no certificate yet (istiod
 * authenticates a client certificate first, docs/protocols.md). Plain text when CONTROL_PLANE_AUTH_POLICY=NONE.
 */
import { controlPlaneUsesTls } from "../config/load.js";
import type { ConfigValues } from "../config/registry.js";
import type { FileSystem } from "../platform/fs.js";
import type { AdsConnection } from "./ads-watch.js";
import type { XdsNode } from "./protos.js";

export async function istiodConnection(fs: FileSystem, values: ConfigValues, node: XdsNode): Promise<AdsConnection> {
  const address = values.DISCOVERY_ADDRESS;
  const target = address.host.includes(":") ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
  if (!controlPlaneUsesTls(values)) return { target, node, clusterId: values.ISTIO_META_CLUSTER_ID };
  const dir = values.OUTPUT_CERTS.replace(/\/+$/, "");
  const rootPem = await fs.readText(`${dir}/root-cert.pem`);
  const certChainPem = await fs.readTextIfExists(`${dir}/cert-chain.pem`);
  const keyPem = await fs.readTextIfExists(`${dir}/key.pem`);
  const token = certChainPem === undefined ? (await fs.readTextIfExists(values.ISTIO_TOKEN_FILE))?.trim() : undefined;
  return {
    target,
    node,
    clusterId: values.ISTIO_META_CLUSTER_ID,
    tls: {
      rootPem,
      servername: values.ISTIOD_SAN,
      ...(certChainPem !== undefined && keyPem !== undefined ? { certChainPem, keyPem } : {}),
    },
    ...(token === undefined ? {} : { token }),
  };
}
