{{/* Full name: release-chart, trimmed to a DNS label. */}}
{{- define "mainsail.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mainsail.operatorName" -}}
{{- printf "%s-operator" (include "mainsail.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mainsail.serviceAccountName" -}}
{{- default (include "mainsail.operatorName" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "mainsail.selectorLabels" -}}
app.kubernetes.io/name: mainsail
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "mainsail.labels" -}}
{{ include "mainsail.selectorLabels" . }}
app.kubernetes.io/part-of: mainsail
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Cluster-scoped names must not collide between releases in different namespaces. */}}
{{- define "mainsail.clusterRoleName" -}}
{{- printf "%s-%s" .Release.Namespace (include "mainsail.operatorName" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "repository:tag" of one entry of .Values.images; an empty tag is the appVersion.
     Usage: include "mainsail.image" (list $ .Values.images.router) */}}
{{- define "mainsail.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- printf "%s:%s" $image.repository ($image.tag | default $root.Chart.AppVersion) -}}
{{- end -}}
