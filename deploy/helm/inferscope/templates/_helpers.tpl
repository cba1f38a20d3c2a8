{{/* Chart name, overridable. */}}
{{- define "inferscope.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name when it already contains the chart name. */}}
{{- define "inferscope.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "inferscope.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the agent's pods; never change them on upgrade. */}}
{{- define "inferscope.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inferscope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "inferscope.labels" -}}
helm.sh/chart: {{ include "inferscope.chart" . }}
{{ include "inferscope.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: agent
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "inferscope.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "inferscope.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "inferscope.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Whether a monitor (podMonitor / serviceMonitor values) is rendered: true, false, or "auto"
     = when the cluster serves the Prometheus Operator's API. */}}
{{- define "inferscope.monitorOn" -}}
{{- $e := toString .values.enabled }}
{{- if or (eq $e "true") (and (eq $e "auto") (.root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) }}true{{- end }}
{{- end }}

{{/* The agent's config.toml: values.config, else files/config.toml (deploy/config/config.toml). */}}
{{- define "inferscope.config" -}}
{{- if .Values.config }}
{{- .Values.config }}
{{- else }}
{{- $f := .Files.Get "files/config.toml" }}
{{- if not $f }}
{{- fail "files/config.toml is missing or empty (it links to deploy/config/config.toml)" }}
{{- end }}
{{- $f }}
{{- end }}
{{- end }}
