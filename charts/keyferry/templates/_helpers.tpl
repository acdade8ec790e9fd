{{/* Names */}}
{{- define "keyferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "keyferry.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "keyferry.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "keyferry.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "keyferry.broker.fullname" -}}
{{- printf "%s-broker" (include "keyferry.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "keyferry.webhook.fullname" -}}
{{- printf "%s-webhook" (include "keyferry.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "keyferry.broker.serviceAccount" -}}
{{- default (include "keyferry.broker.fullname" .) .Values.broker.serviceAccountName -}}
{{- end -}}

{{/* Labels: common, then per component (pass a dict: ctx, component) */}}
{{- define "keyferry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: keyferry
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{ include "keyferry.selectorLabels" . }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "keyferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyferry.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference from images.<name>: repository, then @digest or :tag (appVersion) */}}
{{- define "keyferry.image" -}}
{{- $image := index .ctx.Values.images .name -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .ctx.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Pod Security "restricted": the pod and container security contexts */}}
{{- define "keyferry.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsUser }}
fsGroup: {{ .runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "keyferry.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The scheduling knobs shared by both Deployments (pass the component's values) */}}
{{- define "keyferry.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* The broker's address as agents reach it */}}
{{- define "keyferry.brokerAddress" -}}
{{- if .Values.webhook.brokerAddress -}}
{{- .Values.webhook.brokerAddress -}}
{{- else if .Values.broker.enabled -}}
{{- printf "%s.%s.svc:%v" (include "keyferry.broker.fullname" .) .Release.Namespace .Values.broker.ports.workload -}}
{{- else -}}
{{- fail "webhook.brokerAddress is required when broker.enabled is false: set it to the broker's workload listener as agents reach it, like keyferry.example.com:8443" -}}
{{- end -}}
{{- end -}}

{{/* The webhook's serving-certificate Secret name */}}
{{- define "keyferry.webhook.tlsSecret" -}}
{{- if eq .Values.webhook.tls.mode "existingSecret" -}}
{{- .Values.webhook.tls.existingSecret -}}
{{- else -}}
{{- printf "%s-tls" (include "keyferry.webhook.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Paths inside the broker container */}}
{{- define "keyferry.broker.paths" -}}
config: /etc/keyferry/config
policies: /etc/keyferry/policies
workloadTls: /etc/keyferry/tls
adminTls: /etc/keyferry/admin
vaultCA: /etc/keyferry/vault-ca
data: /var/lib/keyferry
{{- end -}}

{{/* broker.yaml: the user's broker.config with the chart-owned settings laid over it */}}
{{- define "keyferry.broker.config" -}}
{{- $b := .Values.broker -}}
{{- $p := include "keyferry.broker.paths" . | fromYaml -}}
{{- $owned := dict
  "data_dir" $p.data
  "policies" (list (printf "%s/policies.cedar" $p.policies))
  "audit" (dict "log" (printf "%s/audit.jsonl" $p.data))
  "store" (dict "url" (printf "sqlite:///%s/leases.db" $p.data))
  "metrics" (dict "host" "0.0.0.0" "port" $b.ports.metrics)
-}}
{{- $workload := dict "host" "0.0.0.0" "port" $b.ports.workload -}}
{{- if $b.tls.workloadSecret -}}
{{- $_ := set $workload "tls_cert" (printf "%s/tls.crt" $p.workloadTls) -}}
{{- $_ := set $workload "tls_key" (printf "%s/tls.key" $p.workloadTls) -}}
{{- end -}}
{{- $_ := set $owned "workload" $workload -}}
{{- if $b.tls.adminSecret -}}
{{- $_ := set $owned "admin" (dict "host" "0.0.0.0" "port" $b.ports.admin "tls_cert" (printf "%s/broker-admin.crt" $p.adminTls) "tls_key" (printf "%s/broker-admin.key" $p.adminTls) "client_ca" (printf "%s/ca.crt" $p.adminTls)) -}}
{{- end -}}
{{- if $b.roles -}}
{{- $_ := set $owned "roles" (printf "%s/roles.yaml" $p.config) -}}
{{- end -}}
{{- if $b.vaultCA.configMap -}}
{{- $_ := set $owned "vault" (dict "ca_file" (printf "%s/%s" $p.vaultCA $b.vaultCA.key)) -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite (deepCopy (default dict $b.config)) $owned) -}}
{{- end -}}

{{/* webhook.yaml (docs/injector.md "Configuration"); paths inside the webhook container */}}
{{- define "keyferry.webhook.config" -}}
{{- $w := .Values.webhook -}}
{{- $broker := dict "address" (include "keyferry.brokerAddress" .) -}}
{{- if $w.brokerCA.configMap -}}
{{- $_ := set $broker "ca_file" (printf "/etc/keyferry/broker-ca/%s" $w.brokerCA.key) -}}
{{- else if $w.brokerCA.pem -}}
{{- $_ := set $broker "ca_pem" $w.brokerCA.pem -}}
{{- end -}}
{{- $config := dict
  "cluster_name" $w.clusterName
  "namespace" .Release.Namespace
  "excluded_namespaces" (include "keyferry.webhook.excluded" . | fromJsonArray)
  "agent" (dict
    "image" (include "keyferry.image" (dict "ctx" . "name" "agent"))
    "image_pull_policy" .Values.images.agent.pullPolicy
    "run_as_user" $w.agent.runAsUser
    "startup_timeout_seconds" $w.agent.startupTimeoutSeconds
    "backoff_base_seconds" $w.agent.backoffBaseSeconds
    "backoff_cap_seconds" $w.agent.backoffCapSeconds
    "resources" $w.agent.resources
    "env" (include "keyferry.tracing.env" (dict "ctx" . "service" "keyferry-agent") | fromYaml))
  "broker" $broker
  "mount_path" $w.mountPath
  "token_mount_path" $w.tokenMountPath
  "token_expiration_seconds" $w.tokenExpirationSeconds
  "server" (dict "host" "0.0.0.0" "port" $w.port "cert_file" "/etc/keyferry/webhook-tls/tls.crt" "key_file" "/etc/keyferry/webhook-tls/tls.key" "limits" ($w.serverLimits | default dict))
-}}
{{- toYaml $config -}}
{{- end -}}

{{/* Namespaces never injected, as a JSON list: kube-system, the release's own, the values' */}}
{{- define "keyferry.webhook.excluded" -}}
{{- concat (list "kube-system" .Release.Namespace) .Values.webhook.excludedNamespaces | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/* The OTEL_* variables of one traced service, as a YAML map ({} when tracing is off) */}}
{{- define "keyferry.tracing.env" -}}
{{- $t := .ctx.Values.tracing -}}
{{- if $t.enabled -}}
{{- $env := dict "OTEL_SERVICE_NAME" .service -}}
{{- if $t.endpoint -}}{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" $t.endpoint -}}{{- end -}}
{{- toYaml (merge (deepCopy ($t.env | default dict)) $env) -}}
{{- else -}}
{}
{{- end -}}
{{- end -}}
