/**
 * The connection settings of the agent's own ADS streams to istiod (the NDS stream of the DNS proxy, the stream
 * that carries health reports): DISCOVERY_ADDRESS, and under MUTUAL_TLS the mesh root, ISTIOD_SAN, the workload
 * certificate when there is one and the bootstrap token until then, read anew for each connect so a renewed
 * certificate is used on the next one.
 */
import { controlPlaneUsesTls } from "../config/load.js";
import type { ConfigValues } from "../config/registry.js";
import type { FileSystem } from "../platform/fs.js";
import type { AdsConnection } from "./ads-watch.js";
import type { XdsNode } from "./protos.js";

export async function agentAdsConnection(fs: FileSystem, values: ConfigValues, node: XdsNode): Promise<AdsConnection> {
  const address = values.DISCOVERY_ADDRESS;
  const target = address.host.includes(":") ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
  const dir = values.OUTPUT_CERTS.replace(/\/+$/, "");
  if (!controlPlaneUsesTls(values)) return { target, node, clusterId: values.ISTIO_META_CLUSTER_ID };
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
