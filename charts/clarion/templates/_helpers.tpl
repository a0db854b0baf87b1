{{/*
Names and labels, defined once.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "clarion.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>" (or just the release when it already contains the chart name), max 63 chars. */}}
{{- define "clarion.fullname" -}}
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

{{- define "clarion.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object of the release carries. */}}
{{- define "clarion.labels" -}}
helm.sh/chart: {{ include "clarion.chart" . }}
app.kubernetes.io/part-of: clarion
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The default gateway's name: the operator names its Deployment, Service and pod label after it. */}}
{{- define "clarion.gatewayName" -}}
{{- default (include "clarion.fullname" .) .Values.gateway.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels the operator puts on the gateway's pods (service/clarion/names.py gateway_labels). */}}
{{- define "clarion.gatewaySelectorLabels" -}}
app.kubernetes.io/name: clarion
app.kubernetes.io/instance: {{ include "clarion.gatewayName" . }}
clarion.dev/gateway: {{ include "clarion.gatewayName" . }}
{{- end }}

{{- define "clarion.operatorName" -}}
{{- printf "%s-operator" (include "clarion.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "clarion.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "clarion.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "clarion.peeringName" -}}
{{- default (include "clarion.fullname" .) .Values.operator.peering }}
{{- end }}

{{- define "clarion.rabbitmqName" -}}
{{- printf "%s-rabbitmq" (include "clarion.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "clarion.rabbitmqSelectorLabels" -}}
app.kubernetes.io/name: rabbitmq
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: broker
{{- end }}

{{/* The Secret the chart makes for generated or given auth credentials. */}}
{{- define "clarion.authSecretName" -}}
{{- printf "%s-auth" (include "clarion.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of the Secret holding one auth credential: its existingSecret, or the chart's. */}}
{{- define "clarion.credentialSecret" -}}
{{- $cred := index .root.Values.auth .field }}
{{- default (include "clarion.authSecretName" .root) $cred.existingSecret }}
{{- end }}

{{/* Secret name and keys of the broker URLs. */}}
{{- define "clarion.brokerSecretName" -}}
{{- if .Values.rabbitmq.enabled }}
{{- include "clarion.rabbitmqName" . }}
{{- else if .Values.externalBroker.existingSecret }}
{{- .Values.externalBroker.existingSecret }}
{{- else if .Values.externalBroker.url }}
{{- printf "%s-broker" (include "clarion.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- fail "rabbitmq.enabled=false needs externalBroker.existingSecret (a Secret with the AMQP and management URLs) or externalBroker.url" }}
{{- end }}
{{- end }}

{{- define "clarion.brokerUrlKey" -}}
{{- if .Values.rabbitmq.enabled }}url{{ else }}{{ .Values.externalBroker.urlKey }}{{ end }}
{{- end }}

{{- define "clarion.brokerManagementUrlKey" -}}
{{- if .Values.rabbitmq.enabled }}managementUrl{{ else }}{{ .Values.externalBroker.managementUrlKey }}{{ end }}
{{- end }}

{{/*
A secret value kept across upgrades: the given value, else the one already in
the live Secret (lookup), else a fresh random one.
Call with (dict "root" $ "secret" NAME "key" KEY "value" GIVEN "length" N).
*/}}
{{- define "clarion.keptSecret" -}}
{{- if .value }}
{{- .value }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret }}
{{- if and $existing $existing.data (hasKey $existing.data .key) }}
{{- index $existing.data .key | b64dec }}
{{- else }}
{{- randAlphaNum (int .length) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "clarion.tag" -}}
{{- default .root.Chart.AppVersion .tag }}
{{- end }}
