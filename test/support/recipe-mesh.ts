/**
 * The legacy recipe's mesh in a dev-plane object store: `mysqldb` (3306) registered on the VM at `vmIp`, and an HTTP
 * service `hello` (80 → 8080) in the cluster. The dev Pilot's v1 REST and ADS v2 tests start from it.
 */
import { ObjectStore } from "../../src/devplane/store.js";

export function recipeMeshStore(vmIp: string): ObjectStore {
  const store = new ObjectStore();
  store.create("services", {
    metadata: { name: "mysqldb", namespace: "default" },
    spec: { clusterIP: "10.96.0.20", ports: [{ name: "mysql", port: 3306 }] },
  });
  store.create("endpoints", {
    metadata: { name: "mysqldb", namespace: "default" },
    subsets: [{ addresses: [{ ip: vmIp }], ports: [{ name: "mysql", port: 3306 }] }],
  });
  store.create("services", {
    metadata: { name: "hello", namespace: "default" },
    spec: { clusterIP: "10.96.1.1", ports: [{ name: "http", port: 80 }] },
  });
  store.create("endpoints", {
    metadata: { name: "hello", namespace: "default" },
    subsets: [{ addresses: [{ ip: "10.1.1.1" }], ports: [{ name: "http", port: 8080 }] }],
  });
  return store;
}

/** The virtual host domains both Pilot generations (v1 RDS, v2 RDS) give `hello` (default namespace, 10.96.1.1:80). */
export const HELLO_DOMAINS = [
  "hello:80",
  "hello",
  "hello.default:80",
  "hello.default",
  "hello.default.svc:80",
  "hello.default.svc",
  "hello.default.svc.cluster:80",
  "hello.default.svc.cluster",
  "hello.default.svc.cluster.local:80",
  "hello.default.svc.cluster.local",
  "10.96.1.1:80",
  "10.96.1.1",
];
