"""The workload API's flows: what a pod's agent calls with its service-account token
(Issue, Release, Renew, Watch and its Acks), with the checks only those calls make: the
names a pod sends, the per-pod rate limits and caps, and the own-lease gate."""
