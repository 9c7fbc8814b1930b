{{/* The chart name, or nameOverride. */}}
{{- define "batchgrid.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's object-name prefix: fullnameOverride, else release and chart name (once). */}}
{{- define "batchgrid.fullname" -}}
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

{{/* name@version for the helm.sh/chart label. */}}
{{- define "batchgrid.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels every object carries. Call with (dict "ctx" $ "component" "producer").
*/}}
{{- define "batchgrid.labels" -}}
helm.sh/chart: {{ include "batchgrid.chart" .ctx }}
{{ include "batchgrid.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: batchgrid
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels for the pod template of a workload that should not restart on a chart or app
version bump alone (Redis, the one broker): the labels above without those two.
*/}}
{{- define "batchgrid.stableLabels" -}}
{{ include "batchgrid.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: batchgrid
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: name, instance and the component, all constant for the life of a
release, because selectors are immutable. The component keeps the workloads' selectors
apart (each queue's Deployment, the producer, Redis).
*/}}
{{- define "batchgrid.selectorLabels" -}}
app.kubernetes.io/name: {{ include "batchgrid.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* A batchgrid image reference. Call with (dict "ctx" $ "image" .Values.image.worker). */}}
{{- define "batchgrid.image" -}}
{{- $registry := .ctx.Values.image.registry }}
{{- $ref := printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- if .image.digest }}{{ $ref = printf "%s@%s" .image.repository .image.digest }}{{ end }}
{{- if $registry }}{{ printf "%s/%s" $registry $ref }}{{ else }}{{ $ref }}{{ end }}
{{- end }}

{{/* A third-party image reference from {registry, repository, tag}. */}}
{{- define "batchgrid.thirdPartyImage" -}}
{{- printf "%s/%s:%s" .registry .repository .tag }}
{{- end }}

{{/* imagePullSecrets block, or nothing. */}}
{{- define "batchgrid.pullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* The ServiceAccount the batchgrid pods run as. */}}
{{- define "batchgrid.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "batchgrid.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the Redis StatefulSet, its headless Service and its Secret. */}}
{{- define "batchgrid.redis.fullname" -}}
{{- printf "%s-redis" (include "batchgrid.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Host of the Redis server, in the release or external. */}}
{{- define "batchgrid.redis.host" -}}
{{- if .Values.redis.enabled }}
{{- printf "%s-headless.%s.svc" (include "batchgrid.redis.fullname" .) .Release.Namespace }}
{{- else }}
{{- .Values.externalRedis.host }}
{{- end }}
{{- end }}

{{/* Port of the Redis server. */}}
{{- define "batchgrid.redis.port" -}}
{{- if .Values.redis.enabled }}6379{{ else }}{{ .Values.externalRedis.port }}{{ end }}
{{- end }}

{{/* The Secret holding the Redis password, or nothing when external Redis has none. */}}
{{- define "batchgrid.redis.secretName" -}}
{{- if .Values.redis.enabled }}
{{- default (include "batchgrid.redis.fullname" .) .Values.redis.auth.existingSecret }}
{{- else }}
{{- .Values.externalRedis.existingSecret }}
{{- end }}
{{- end }}

{{/* The key of the password in that Secret. */}}
{{- define "batchgrid.redis.passwordKey" -}}
{{- if .Values.redis.enabled }}
{{- .Values.redis.auth.existingSecretPasswordKey }}
{{- else }}
{{- .Values.externalRedis.existingSecretPasswordKey }}
{{- end }}
{{- end }}

{{/*
Environment entries that give a process its broker: the password from its Secret,
then the URL built from it with Kubernetes' $(VAR) expansion, so no secret is
ever written into a Deployment. Call with (dict "ctx" $ "name" "BATCHGRID_BROKER_URL").
*/}}
{{- define "batchgrid.brokerEnv" -}}
{{- $ctx := .ctx }}
{{- $secret := include "batchgrid.redis.secretName" $ctx }}
{{- $scheme := "redis" }}
{{- if and (not $ctx.Values.redis.enabled) $ctx.Values.externalRedis.tls }}{{ $scheme = "rediss" }}{{ end }}
{{- $db := ternary 0 $ctx.Values.externalRedis.database $ctx.Values.redis.enabled }}
{{- $user := ternary "" $ctx.Values.externalRedis.username $ctx.Values.redis.enabled }}
{{- $address := printf "%s:%v/%v" (include "batchgrid.redis.host" $ctx) (include "batchgrid.redis.port" $ctx) (int $db) }}
{{- if $user }}
# Read by KEDA's Redis list trigger too (usernameFromEnv).
- name: REDIS_USERNAME
  value: {{ $user | quote }}
{{- end }}
{{- if $secret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ include "batchgrid.redis.passwordKey" $ctx }}
- name: {{ .name }}
  value: {{ printf "%s://%s:$(REDIS_PASSWORD)@%s" $scheme $user $address | quote }}
{{- else }}
- name: {{ .name }}
  value: {{ printf "%s://%s%s" $scheme (ternary "" (printf "%s@" $user) (empty $user)) $address | quote }}
{{- end }}
{{- end }}

{{/* The storage root batchgrid confines every input and output to. */}}
{{- define "batchgrid.storageRoot" -}}
{{- if eq .Values.storage.type "s3" }}
{{- printf "s3://%s" (join "/" (compact (list .Values.storage.s3.bucket (trimAll "/" .Values.storage.s3.prefix)))) }}
{{- else }}
{{- .Values.storage.mountPath }}
{{- end }}
{{- end }}

{{/* The PVC holding shared data (pvc storage). */}}
{{- define "batchgrid.storage.claimName" -}}
{{- default (printf "%s-data" (include "batchgrid.fullname" .)) .Values.storage.pvc.existingClaim }}
{{- end }}

{{/* The shared-storage volume, for pods that read or write job data. */}}
{{- define "batchgrid.storage.volumes" -}}
{{- if eq .Values.storage.type "pvc" }}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "batchgrid.storage.claimName" . }}
{{- else if eq .Values.storage.type "hostPath" }}
- name: data
  hostPath:
    path: {{ .Values.storage.hostPath.path }}
    type: DirectoryOrCreate
{{- end }}
{{- end }}

{{/* Its mount, matching batchgrid.storage.volumes. */}}
{{- define "batchgrid.storage.volumeMounts" -}}
{{- if has .Values.storage.type (list "pvc" "hostPath") }}
- name: data
  mountPath: {{ .Values.storage.mountPath }}
{{- end }}
{{- end }}

{{/* S3 credentials and endpoint from their Secret (s3 storage), read by s3fs/botocore. */}}
{{- define "batchgrid.storage.env" -}}
{{- if eq .Values.storage.type "s3" }}
{{- with .Values.storage.s3 }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .secretAccessKeyKey }}
- name: AWS_DEFAULT_REGION
  value: {{ .region | quote }}
{{- if .endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ .endpoint | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Whether Celery task events are on: asked for, or needed by the exporter or Flower. */}}
{{- define "batchgrid.taskEvents" -}}
{{- if or .Values.config.taskEvents .Values.celeryExporter.enabled .Values.flower.enabled }}true{{ else }}false{{ end }}
{{- end }}

{{/* How long a worker may take to stop: the soft shutdown when set, else the hard time limit. */}}
{{- define "batchgrid.worker.stopSeconds" -}}
{{- int (default .Values.config.hardTimeLimitSeconds .Values.worker.softShutdownSeconds) }}
{{- end }}

{{/* The workers' grace period: set, or the time a worker may take to stop plus a margin. */}}
{{- define "batchgrid.worker.gracePeriodSeconds" -}}
{{- if not .Values.worker.terminationGracePeriodSeconds }}
{{- add (include "batchgrid.worker.stopSeconds" .) .Values.worker.terminationGraceMarginSeconds }}
{{- else }}
{{- int .Values.worker.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* The Secret holding the API token (auth on). */}}
{{- define "batchgrid.api.secretName" -}}
{{- default (printf "%s-api" (include "batchgrid.fullname" .)) .Values.producer.auth.existingSecret }}
{{- end }}

{{/* The producer's in-cluster URL. */}}
{{- define "batchgrid.producer.url" -}}
{{- printf "http://%s-producer.%s.svc:%v" (include "batchgrid.fullname" .) .Release.Namespace .Values.producer.service.port }}
{{- end }}

{{/* Pod-level security context of batchgrid pods. */}}
{{- define "batchgrid.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{/*
Container security context of a third-party container with its own uid.
Call with (dict "ctx" $ "uid" 999).
*/}}
{{- define "batchgrid.containerSecurityContextAs" -}}
{{- $context := deepCopy .ctx.Values.containerSecurityContext }}
{{- $_ := set $context "runAsUser" (int .uid) }}
{{- $_ := set $context "runAsGroup" (int .uid) }}
{{- toYaml $context }}
{{- end }}

{{/* A pod security context for a third-party image with its own uid. */}}
{{- define "batchgrid.podSecurityContextAs" -}}
{{- $context := deepCopy .ctx.Values.podSecurityContext }}
{{- $_ := set $context "runAsUser" (int .uid) }}
{{- $_ := set $context "runAsGroup" (int .uid) }}
{{- $_ := set $context "fsGroup" (int .uid) }}
{{- toYaml $context }}
{{- end }}

{{/*
A Secret value generated once: the value already in the cluster when there is one
(upgrades keep it), else a new random one. Call with (dict "ctx" $ "name" .. "key" ..).
*/}}
{{- define "batchgrid.generatedSecretValue" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- if and $existing (index ($existing.data | default dict) .key) }}
{{- index $existing.data .key }}
{{- else }}
{{- randAlphaNum 32 | b64enc }}
{{- end }}
{{- end }}

{{/*
Environment of every batchgrid container: the broker from its Secret, storage
credentials, and where the pod runs (downward API). Settings come from envFrom.
*/}}
{{- define "batchgrid.env" -}}
{{- include "batchgrid.brokerEnv" (dict "ctx" . "name" "BATCHGRID_BROKER_URL") }}
{{- include "batchgrid.storage.env" . }}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}

{{/* envFrom block reading the settings ConfigMap. */}}
{{- define "batchgrid.envFrom" -}}
envFrom:
  - configMapRef:
      name: {{ include "batchgrid.fullname" . }}-config
{{- end }}

{{/* Pod annotations that roll the pods when the settings change. */}}
{{- define "batchgrid.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end }}

{{/* The Secret holding Flower's basic-auth password. */}}
{{- define "batchgrid.flower.secretName" -}}
{{- default (printf "%s-flower" (include "batchgrid.fullname" .)) .Values.flower.basicAuth.existingSecret }}
{{- end }}
