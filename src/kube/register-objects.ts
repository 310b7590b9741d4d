/** The Kubernetes objects `register` reads and writes, with only the fields it uses. */

export const SERVICE_ACCOUNT_ANNOTATION = "alpha.istio.io/kubernetes-serviceaccounts";
export const WORKLOAD_ENTRY_GROUP = "networking.istio.io/v1";

export interface ObjectMeta {
  name: string;
  namespace?: string;
  resourceVersion?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  [key: string]: unknown;
}

export interface EndpointAddress {
  ip: string;
  [key: string]: unknown;
}

export interface EndpointPort {
  name?: string;
  port: number;
  protocol?: string;
  [key: string]: unknown;
}

export interface EndpointSubset {
  addresses?: EndpointAddress[];
  notReadyAddresses?: EndpointAddress[];
  ports?: EndpointPort[];
  [key: string]: unknown;
}

export interface EndpointsObject {
  apiVersion: string;
  kind: string;
  metadata: ObjectMeta;
  subsets?: EndpointSubset[];
  [key: string]: unknown;
}

export interface ServiceObject {
  apiVersion: string;
  kind: string;
  metadata: ObjectMeta;
  spec?: Record<string, unknown>;
  [key: string]: unknown;
}

export interface WorkloadEntryObject {
  apiVersion: string;
  kind: string;
  metadata: ObjectMeta;
  spec: {
    address: string;
    labels: Record<string, string>;
    serviceAccount: string;
    ports: Record<string, number>;
  };
}
