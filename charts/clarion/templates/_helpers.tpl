{{/*
Names and labels, defined once.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "clarion.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
"<release>-<chart>" (or just the release when it already contains the chart name),
max 63 chars. Dots (legal in release names) become dashes, and a release name that
starts with a digit goes after the chart name: Service names start with a letter.
*/}}
{{- define "clarion.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- $release := .Release.Name | replace "." "-" }}
{{- $full := printf "%s-%s" $release $name }}
{{- if regexMatch "^[0-9]" $release }}
{{- $full = printf "%s-%s" $name $release }}
{{- else if contains $name $release }}
{{- $full = $release }}
{{- end }}
{{- include "clarion.fit" (dict "base" $full "suffix" "" "max" 63) }}
{{- end }}
{{- end }}

{{/*
A name of at most .max characters made of .base and .suffix: the two joined when
they fit, else the base cut short with a hash of the whole base before the suffix,
so two long names stay apart and every suffix stays readable. Limits: 63 for a
Service or a label value, 52 for a StatefulSet (its controller-revision-hash label),
46 for a gateway (its pod names; crds/websocketgateways.yaml).
*/}}
{{- define "clarion.fit" -}}
{{- $whole := printf "%s%s" .base .suffix }}
{{- if le (len $whole) (int .max) }}
{{- $whole }}
{{- else }}
{{- $keep := sub (sub (int .max) (len .suffix)) 9 }}
{{- printf "%s-%s%s" (regexReplaceAll "-+$" (trunc (int $keep) .base) "") (sha256sum .base | trunc 8) .suffix }}
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
{{- .Values.gateway.name | default (include "clarion.fit" (dict "base" (include "clarion.fullname" .) "suffix" "" "max" 46)) }}
{{- end }}

{{/* The labels the operator puts on the gateway's pods (service/clarion/names.py gateway_labels). */}}
{{- define "clarion.gatewaySelectorLabels" -}}
app.kubernetes.io/name: clarion
app.kubernetes.io/instance: {{ include "clarion.gatewayName" . }}
clarion.dev/gateway: {{ include "clarion.gatewayName" . }}
{{- end }}

{{- define "clarion.operatorName" -}}
{{- include "clarion.fit" (dict "base" (include "clarion.fullname" .) "suffix" "-operator" "max" 63) }}
{{- end }}

{{/* The operator's metrics Service (with metrics.serviceMonitor). */}}
{{- define "clarion.operatorMetricsName" -}}
{{- include "clarion.fit" (dict "base" (include "clarion.fullname" .) "suffix" "-operator-metrics" "max" 63) }}
{{- end }}

{{- define "clarion.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "clarion.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The kopf peering object. Watching all namespaces, it is ClusterKopfPeering "clarion"
whatever the release: a second cluster-wide release fails to install on it (Helm
will not take over another release's object), and even forced, its operators would
peer with the first ones, so only one operator ever acts on a gateway (they share
the finalizer). Watching the release namespace, a KopfPeering named after the release.
*/}}
{{- define "clarion.peeringName" -}}
{{- if .Values.operator.peering }}
{{- .Values.operator.peering }}
{{- else if .Values.operator.watchNamespace }}
{{- include "clarion.fullname" . }}
{{- else }}
{{- "clarion" }}
{{- end }}
{{- end }}

{{/*
Operators that would act on the same gateways: another cluster-wide release
(ClusterKopfPeering "clarion" of another release), or a cluster-wide and a
namespaced one together. Found with lookup, so at `helm install`/`upgrade`
(and `helm template --dry-run=server`); tools that render offline see nothing.
*/}}
{{- define "clarion.checkOtherOperators" -}}
{{- /* kopf's CRDs are in crds/, which helm installs before it renders. */}}
{{- $cluster := lookup "kopf.dev/v1" "ClusterKopfPeering" "" "clarion" }}
{{- $owner := "" }}
{{- if $cluster }}
{{- $owner = printf "%s/%s" (index ($cluster.metadata.annotations | default dict) "meta.helm.sh/release-namespace" | default "?") (index ($cluster.metadata.annotations | default dict) "meta.helm.sh/release-name" | default "?") }}
{{- end }}
{{- $self := printf "%s/%s" .Release.Namespace .Release.Name }}
{{- if and $cluster (ne $owner $self) }}
{{- if .Values.operator.watchNamespace }}
{{- fail (printf "release %s watches all namespaces already (ClusterKopfPeering clarion): its operator would act on this release's gateways too. Use that release, or uninstall it first" $owner) }}
{{- else }}
{{- fail (printf "release %s watches all namespaces already (ClusterKopfPeering clarion): two cluster-wide releases would both act on every gateway. Use that release, or set operator.watchNamespace" $owner) }}
{{- end }}
{{- end }}
{{- if .Values.operator.watchNamespace }}
{{- /* A second operator for this namespace: both would act on every gateway in it. */}}
{{- range (lookup "kopf.dev/v1" "KopfPeering" .Release.Namespace "").items | default list }}
{{- $a := .metadata.annotations | default dict }}
{{- $other := printf "%s/%s" (index $a "meta.helm.sh/release-namespace" | default "?") (index $a "meta.helm.sh/release-name" | default "?") }}
{{- if and (eq (index (.metadata.labels | default dict) "app.kubernetes.io/part-of" | default "") "clarion") (ne $other $self) }}
{{- fail (printf "release %s runs a Clarion operator for namespace %s already: two would both act on every gateway there. Set operator.enabled=false in this release (its gateways are then that operator's), or uninstall that release first" $other .metadata.namespace) }}
{{- end }}
{{- end }}
{{- else }}
{{- range (lookup "kopf.dev/v1" "KopfPeering" "" "").items | default list }}
{{- $a := .metadata.annotations | default dict }}
{{- $other := printf "%s/%s" (index $a "meta.helm.sh/release-namespace" | default "?") (index $a "meta.helm.sh/release-name" | default "?") }}
{{- if and (eq (index (.metadata.labels | default dict) "app.kubernetes.io/part-of" | default "") "clarion") (ne $other $self) }}
{{- fail (printf "release %s runs a Clarion operator for namespace %s: a cluster-wide operator would act on its gateways too. Set operator.watchNamespace, or uninstall that release first" $other .metadata.namespace) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The namespace the operator watches: the release's; a different one cannot work. */}}
{{- define "clarion.checkWatchNamespace" -}}
{{- include "clarion.checkOtherOperators" . }}
{{- with .Values.operator.watchNamespace }}
{{- if ne . $.Release.Namespace }}
{{- fail (printf "operator.watchNamespace=%s differs from the release namespace %s: the chart's gateway and Secrets are in the release namespace, where the operator would not look. Install the release into %s (helm install -n %s), or leave watchNamespace empty to watch all namespaces" . $.Release.Namespace . .) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "clarion.rabbitmqName" -}}
{{- /* A StatefulSet: 52 at most (its pods' controller-revision-hash label). */}}
{{- include "clarion.fit" (dict "base" (include "clarion.fullname" .) "suffix" "-rabbitmq" "max" 52) }}
{{- end }}

{{- define "clarion.rabbitmqSelectorLabels" -}}
app.kubernetes.io/name: rabbitmq
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: broker
{{- end }}

{{/* The Secret the chart makes for generated or given auth credentials. */}}
{{- define "clarion.authSecretName" -}}
{{- include "clarion.fit" (dict "base" (include "clarion.fullname" .) "suffix" "-auth" "max" 63) }}
{{- end }}

{{/* Name of the Secret holding one auth credential: its existingSecret, or the chart's. */}}
{{- define "clarion.credentialSecret" -}}
{{- $cred := index .root.Values.auth .field }}
{{- default (include "clarion.authSecretName" .root) $cred.existingSecret }}
{{- end }}

{{/* Secret name and keys of the broker URLs. */}}
{{- define "clarion.brokerSecretName" -}}
{{- if .Values.rabbitmq.enabled }}
{{- default (include "clarion.rabbitmqName" .) .Values.rabbitmq.existingSecret }}
{{- else if .Values.externalBroker.existingSecret }}
{{- .Values.externalBroker.existingSecret }}
{{- else if .Values.externalBroker.url }}
{{- include "clarion.fit" (dict "base" (include "clarion.fullname" .) "suffix" "-broker" "max" 63) }}
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
{{- if not (hasKey .root.Values "_kept") }}
{{- $_ := set .root.Values "_kept" dict }}
{{- end }}
{{- $id := printf "%s/%s" .secret .key }}
{{- if not (hasKey .root.Values._kept $id) }}
{{- $value := .value }}
{{- if not $value }}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret }}
{{- if and $existing $existing.data (hasKey $existing.data .key) }}
{{- $value = index $existing.data .key | b64dec }}
{{- else }}
{{- $value = randAlphaNum (int .length) }}
{{- end }}
{{- end }}
{{- /* One value per render: the Secret and the pods' checksum must see the same one. */}}
{{- $_ := set .root.Values._kept $id $value }}
{{- end }}
{{- index .root.Values._kept $id }}
{{- end }}

{{/* The in-chart RabbitMQ's password (generated, given or kept). */}}
{{- define "clarion.rabbitmqPassword" -}}
{{- include "clarion.keptSecret" (dict "root" . "secret" (include "clarion.rabbitmqName" .) "key" "password" "value" .Values.rabbitmq.password "length" 32) }}
{{- end }}

{{/*
A checksum of every credential the gateway pods read, put on their template:
a new API key, JWT secret, admin token or broker password rolls them. An
existingSecret counts by its name only (rotate it with a new name, or restart).
*/}}
{{- define "clarion.credentialsChecksum" -}}
{{- $parts := list }}
{{- range $field := list "apiKey" "jwtSecret" "adminToken" }}
{{- $cred := index $.Values.auth $field }}
{{- if $cred.existingSecret }}
{{- $parts = append $parts (printf "%s=existing:%s/%s" $field $cred.existingSecret $cred.key) }}
{{- else }}
{{- $parts = append $parts (printf "%s=%s" $field (include "clarion.keptSecret" (dict "root" $ "secret" (include "clarion.authSecretName" $) "key" $cred.key "value" $cred.value "length" 40))) }}
{{- end }}
{{- end }}
{{- if and .Values.rabbitmq.enabled (not .Values.rabbitmq.existingSecret) }}
{{- $parts = append $parts (printf "broker=%s:%s" .Values.rabbitmq.username (include "clarion.rabbitmqPassword" .)) }}
{{- if include "clarion.rabbitmqHA" . }}
{{- /* The node list too: after a scale-out the gateways restart with every address. */}}
{{- $parts = append $parts (printf "brokerHosts=%s" (include "clarion.rabbitmqHosts" .)) }}
{{- end }}
{{- else if and (not .Values.rabbitmq.enabled) (not .Values.externalBroker.existingSecret) }}
{{- $parts = append $parts (printf "broker=%s" .Values.externalBroker.url) }}
{{- else }}
{{- $parts = append $parts (printf "broker=existing:%s" (include "clarion.brokerSecretName" .)) }}
{{- end }}
{{- join "\n" $parts | sha256sum | trunc 16 }}
{{- end }}

{{- define "clarion.tag" -}}
{{- default .root.Chart.AppVersion .tag }}
{{- end }}

{{/* The in-chart RabbitMQ runs as a cluster (rabbitmq.replicas > 1). */}}
{{- define "clarion.rabbitmqHA" -}}
{{- if gt (int .Values.rabbitmq.replicas) 1 }}true{{ end }}
{{- end }}

{{/* The headless Service that gives each RabbitMQ pod of a cluster its DNS name. */}}
{{- define "clarion.rabbitmqNodesName" -}}
{{- include "clarion.fit" (dict "base" (include "clarion.fullname" .) "suffix" "-rabbitmq-nodes" "max" 63) }}
{{- end }}

{{/*
The image predates RabbitMQ 4.1, whose rabbitmq_peer_discovery_k8s lists the
headless Service's endpoints through the Kubernetes API (it needs a token, RBAC
and its cluster_formation.k8s.* settings). From 4.1 on the plugin asks nothing:
every pod joins the one with ordinal 0, and it ignores (with a warning) the old
settings. A tag without a version counts as current.
*/}}
{{- define "clarion.rabbitmqLegacyDiscovery" -}}
{{- $v := regexFind "^[0-9]+\\.[0-9]+(\\.[0-9]+)?" (toString .Values.rabbitmq.image.tag) }}
{{- if and $v (semverCompare "<4.1.0-0" $v) }}true{{ end }}
{{- end }}

{{/* Each RabbitMQ node's host name (per-pod DNS under the headless Service), or the one Service. */}}
{{- define "clarion.rabbitmqHosts" -}}
{{- $ns := .Release.Namespace }}
{{- $name := include "clarion.rabbitmqName" . }}
{{- $hosts := list }}
{{- if and (include "clarion.rabbitmqHA" .) (eq .Values.rabbitmq.gatewayAddresses "nodes") }}
{{- $nodes := include "clarion.rabbitmqNodesName" . }}
{{- range $i := until (int .Values.rabbitmq.replicas) }}
{{- $hosts = append $hosts (printf "%s-%d.%s.%s.svc" $name $i $nodes $ns) }}
{{- end }}
{{- else }}
{{- $hosts = append $hosts (printf "%s.%s.svc" $name $ns) }}
{{- end }}
{{- join "," $hosts }}
{{- end }}

{{/* The Erlang cookie the nodes of an in-chart cluster share (generated, given or kept). */}}
{{- define "clarion.rabbitmqErlangCookie" -}}
{{- include "clarion.keptSecret" (dict "root" . "secret" (include "clarion.rabbitmqName" .) "key" "erlangCookie" "value" .Values.rabbitmq.erlangCookie "length" 48) }}
{{- end }}

{{/*
The in-chart RabbitMQ's rabbitmq.conf additions: limits taken from the values, not
from the node's RAM and disk. The ConfigMap holds it; its hash rolls the nodes.
*/}}
{{- define "clarion.rabbitmqConf" -}}
# The container's memory limit is not what RabbitMQ sees (it reads the node's RAM):
# an absolute watermark under the limit raises the memory alarm before the OOM kill.
vm_memory_high_watermark.absolute = {{ .Values.rabbitmq.memoryHighWatermark }}
disk_free_limit.absolute = {{ .Values.rabbitmq.diskFreeLimit }}
{{- if include "clarion.rabbitmqHA" . }}
# Cluster formation on first boot: each node joins the one with ordinal 0.
cluster_formation.peer_discovery_backend = k8s
{{- if include "clarion.rabbitmqLegacyDiscovery" . }}
# Before 4.1 the plugin lists the headless Service's endpoints through the API.
cluster_formation.k8s.host = kubernetes.default
cluster_formation.k8s.address_type = hostname
cluster_formation.k8s.service_name = {{ include "clarion.rabbitmqNodesName" . }}
cluster_formation.k8s.hostname_suffix = .{{ include "clarion.rabbitmqNodesName" . }}.{{ .Release.Namespace }}
{{- end }}
# A frozen node blocks publishing until the others declare it down (default 60 s).
net_ticktime = {{ int .Values.rabbitmq.netTicktime }}
{{- end }}
{{- end }}
