{{/* Namespace of the agent's objects. */}}
{{- define "nodeagent.namespace" -}}
{{- .Values.namespace.name | default .Release.Namespace -}}
{{- end -}}

{{/* Name of every object of the release (the DaemonSet, its ServiceAccount, RBAC, ConfigMap). */}}
{{- define "nodeagent.fullname" -}}
{{- if eq .Release.Name .Chart.Name -}}
{{- .Chart.Name | trunc 63 -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "nodeagent.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nodeagent.labels" -}}
{{ include "nodeagent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "nodeagent.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* "HOST:PORT" for --metrics-address; ":PORT" binds every address. */}}
{{- define "nodeagent.metricsAddress" -}}
{{- $host := .Values.metrics.host -}}
{{- if contains ":" $host -}}{{- $host = printf "[%s]" $host -}}{{- end -}}
{{- printf "%s:%d" $host (int .Values.metrics.port) -}}
{{- end -}}

{{/* The chart's own etcd (ipam.etcd.deploy): StatefulSet, headless Service, TLS Secret. */}}
{{- define "nodeagent.etcdName" -}}
{{- printf "%s-etcd" (include "nodeagent.fullname" .) | trunc 57 | trimSuffix "-" -}}
{{- end -}}

{{- define "nodeagent.etcdTlsSecret" -}}
{{- .Values.ipam.etcd.tls.secretName | default (printf "%s-tls" (include "nodeagent.etcdName" .)) -}}
{{- end -}}

{{/* The cluster store's client URLs, one per line ("" when there is none). */}}
{{- define "nodeagent.etcdEndpoints" -}}
{{- if .Values.ipam.etcd.deploy -}}
{{- $name := include "nodeagent.etcdName" . -}}
{{- $ns := include "nodeagent.namespace" . -}}
{{- range $i := until (int .Values.ipam.etcd.replicas) }}
{{ printf "https://%s-%d.%s.%s.svc:2379" $name $i $name $ns }}
{{- end -}}
{{- else -}}
{{- range .Values.ipam.etcd.endpoints }}
{{ . }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Secret with the agent's etcd client files (ca.crt, tls.crt, tls.key), or "". */}}
{{- define "nodeagent.etcdClientSecret" -}}
{{- if .Values.ipam.etcd.deploy -}}
{{- include "nodeagent.etcdTlsSecret" . -}}
{{- else -}}
{{- .Values.ipam.etcd.clientSecret -}}
{{- end -}}
{{- end -}}

{{/* /etc/nodeagent/agent.yaml: the settings the agent and its CNI fallback share. */}}
{{- define "nodeagent.agentSettings" -}}
{{- $ipam := dict "stateDir" "/var/lib/nodeagent/ipam" "whereabouts" (dict "honourIPPools" .Values.ipam.whereabouts.honourIPPools) -}}
{{- with .Values.ipam.clusterName -}}
{{- $_ := set $ipam "clusterName" . -}}
{{- end -}}
{{- $endpoints := include "nodeagent.etcdEndpoints" . | trim -}}
{{- if $endpoints -}}
{{- $etcd := dict "endpoints" (splitList "\n" $endpoints) "prefix" .Values.ipam.etcd.prefix "timeout" .Values.ipam.etcd.timeout -}}
{{- if include "nodeagent.etcdClientSecret" . -}}
{{- $_ := set $etcd "caFile" "/etc/nodeagent-etcd/ca.crt" -}}
{{- $_ := set $etcd "certFile" "/etc/nodeagent-etcd/tls.crt" -}}
{{- $_ := set $etcd "keyFile" "/etc/nodeagent-etcd/tls.key" -}}
{{- end -}}
{{- $_ := set $ipam "etcd" $etcd -}}
{{- end -}}
{{- toYaml (dict "stateDir" "/var/lib/nodeagent" "ipam" $ipam) -}}
{{- end -}}
