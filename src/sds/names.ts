/** Istio's SDS resource names (istio/istio pilot/pkg/model/authentication.go: SDSDefaultResourceName, SDSRootResourceName). */
export const WORKLOAD_SECRET = "default";
export const ROOT_SECRET = "ROOTCA";
