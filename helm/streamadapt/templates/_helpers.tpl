{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "streamadapt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release already holds the name. */}}
{{- define "streamadapt.fullname" -}}
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

{{- define "streamadapt.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "streamadapt.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "streamadapt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamadapt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The pods the Service selects: ours, or the host pods in sidecar mode. The values of
     sidecar.podSelector are templates, so a parent chart can select its own release's pods
     ("{{ .Release.Name }}"). */}}
{{- define "streamadapt.podSelector" -}}
{{- if eq .Values.mode "sidecar" }}
{{- if not .Values.sidecar.podSelector }}
{{- fail "sidecar mode with service.enabled needs sidecar.podSelector: the labels of the pods the container is added to" }}
{{- end }}
{{- tpl (toYaml .Values.sidecar.podSelector) . }}
{{- else }}
{{- include "streamadapt.selectorLabels" . }}
{{- end }}
{{- end }}

{{- define "streamadapt.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "streamadapt.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "streamadapt.credentialsSecret" -}}
{{- if .Values.kafkaCredentials.existingSecret }}
{{- .Values.kafkaCredentials.existingSecret }}
{{- else if .Values.kafkaCredentials.create }}
{{- printf "%s-kafka" (include "streamadapt.fullname" .) }}
{{- end }}
{{- end }}

{{/* "true" when checkpoints go to a directory, which the chart mounts at mountPath. */}}
{{- define "streamadapt.checkpointVolume" -}}
{{- and .Values.checkpoints.enabled (ne (default "dir" .Values.checkpoints.store) "kafka") }}
{{- end }}

{{- define "streamadapt.checkpointClaim" -}}
{{- default (printf "%s-checkpoints" (include "streamadapt.fullname" .)) .Values.checkpoints.persistence.existingClaim }}
{{- end }}

{{/* One env var per setting: STREAMADAPT_<KEY>[__<FIELD>], upper case. */}}
{{- define "streamadapt.env" -}}
{{- $jsonKeys := list "model_params" "drift" }}
{{- with .Values.settings.http }}
{{- fail "settings.http is set by the chart: use http.port (the container binds 0.0.0.0)" }}
{{- end }}
{{- with .Values.settings.checkpoint }}{{ if hasKey . "dir" }}
{{- fail "settings.checkpoint.dir is set by the chart: use checkpoints.mountPath" }}
{{- end }}{{ if hasKey . "store" }}
{{- fail "settings.checkpoint.store is set by the chart: use checkpoints.store (dir or kafka)" }}
{{- end }}{{ if hasKey . "hmac_key" }}
{{- fail "settings.checkpoint.hmac_key must not be a plain value: use checkpoints.hmacKey.existingSecret (and checkpoints.hmacKey.secretKey)" }}
{{- end }}{{ end }}
{{- with .Values.settings.kafka }}
{{- range $secret := list "sasl_username" "sasl_password" "ssl_password" }}
{{- if hasKey $.Values.settings.kafka $secret }}
{{- fail (printf "settings.kafka.%s must not be a plain value: use kafkaCredentials.existingSecret (or kafkaCredentials.create)" $secret) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $key, $value := .Values.settings }}
{{- if and (kindIs "map" $value) (not (has $key $jsonKeys)) }}
{{- range $field, $v := $value }}
- name: {{ printf "STREAMADAPT_%s__%s" $key $field | upper }}
  value: {{ if or (kindIs "slice" $v) (kindIs "map" $v) }}{{ toJson $v | quote }}{{ else }}{{ toString $v | quote }}{{ end }}
{{- end }}
{{- else if or (kindIs "slice" $value) (kindIs "map" $value) }}
- name: {{ printf "STREAMADAPT_%s" $key | upper }}
  value: {{ toJson $value | quote }}
{{- else }}
- name: {{ printf "STREAMADAPT_%s" $key | upper }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end }}
- name: STREAMADAPT_HTTP__HOST
  value: "0.0.0.0"
- name: STREAMADAPT_HTTP__PORT
  value: {{ .Values.http.port | quote }}
{{- if eq (include "streamadapt.checkpointVolume" .) "true" }}
- name: STREAMADAPT_CHECKPOINT__DIR
  value: {{ .Values.checkpoints.mountPath | quote }}
{{- else if .Values.checkpoints.enabled }}
- name: STREAMADAPT_CHECKPOINT__STORE
  value: "kafka"
{{- end }}
{{- with (.Values.checkpoints.hmacKey).existingSecret }}
- name: STREAMADAPT_CHECKPOINT__HMAC_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.checkpoints.hmacKey.secretKey }}
{{- end }}
{{- with (include "streamadapt.credentialsSecret" .) }}
- name: STREAMADAPT_KAFKA__SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.kafkaCredentials.usernameKey }}
- name: STREAMADAPT_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.kafkaCredentials.passwordKey }}
{{- end }}
{{- if .Values.kafkaCredentials.tlsSecret }}
- name: STREAMADAPT_KAFKA__SSL_CAFILE
  value: /etc/streamadapt/kafka-tls/ca.crt
{{- if .Values.kafkaCredentials.tlsClientCert }}
- name: STREAMADAPT_KAFKA__SSL_CERTFILE
  value: /etc/streamadapt/kafka-tls/tls.crt
- name: STREAMADAPT_KAFKA__SSL_KEYFILE
  value: /etc/streamadapt/kafka-tls/tls.key
{{- end }}
{{- end }}
- name: HOME
  value: /tmp
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The name of the container's port: "http" in its own pod; in a pod shared with another
     container, a name that the host container is unlikely to use (names are unique per pod). */}}
{{- define "streamadapt.portName" -}}
{{- ternary "streamadapt" "http" (eq .Values.mode "sidecar") }}
{{- end }}

{{/* The streamadapt container, shared by the Deployment and the sidecar templates. */}}
{{- define "streamadapt.container" -}}
name: streamadapt
image: {{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- if and (eq .Values.mode "sidecar") .Values.sidecar.native }}
restartPolicy: Always
{{- end }}
command: {{ toJson .Values.command }}
args: {{ toJson .Values.args }}
ports:
  - name: {{ include "streamadapt.portName" . }}
    containerPort: {{ .Values.http.port }}
    protocol: TCP
env:
{{- include "streamadapt.env" . | trim | nindent 2 }}
{{- with .Values.extraEnvFrom }}
envFrom:
{{- toYaml . | nindent 2 }}
{{- end }}
startupProbe:
  httpGet:
    path: {{ .Values.probes.startup.path }}
    port: {{ include "streamadapt.portName" . }}
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: {{ .Values.probes.liveness.path }}
    port: {{ include "streamadapt.portName" . }}
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: {{ .Values.probes.readiness.path }}
    port: {{ include "streamadapt.portName" . }}
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
resources:
{{- toYaml .Values.resources | nindent 2 }}
securityContext:
{{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  - name: streamadapt-tmp
    mountPath: /tmp
{{- if eq (include "streamadapt.checkpointVolume" .) "true" }}
  - name: streamadapt-checkpoints
    mountPath: {{ .Values.checkpoints.mountPath }}
{{- end }}
{{- if .Values.kafkaCredentials.tlsSecret }}
  - name: streamadapt-kafka-tls
    mountPath: /etc/streamadapt/kafka-tls
    readOnly: true
{{- end }}
{{- end }}

{{/* The pod volumes the container mounts. */}}
{{- define "streamadapt.volumes" -}}
- name: streamadapt-tmp
  emptyDir:
    sizeLimit: 256Mi
{{- if eq (include "streamadapt.checkpointVolume" .) "true" }}
- name: streamadapt-checkpoints
{{- if .Values.checkpoints.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "streamadapt.checkpointClaim" . }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}
{{- if .Values.kafkaCredentials.tlsSecret }}
- name: streamadapt-kafka-tls
  secret:
    secretName: {{ .Values.kafkaCredentials.tlsSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/*
Sidecar mode: the pieces another chart includes into its own pod template when it lists
streamadapt as a dependency. Each takes the streamadapt chart's own scope (its values, chart
and release), which Helm gives a parent as .Subcharts.<name or alias>, e.g.

  containers:
    - name: app
      ...
    {{- include "streamadapt.sidecar.containers" .Subcharts.streamadapt | nindent 4 }}
  volumes:
    {{- include "streamadapt.sidecar.volumes" .Subcharts.streamadapt | nindent 4 }}

streamadapt.sidecar.containers: the container as a list item, or nothing when sidecar.native.
streamadapt.sidecar.initContainers: the same for initContainers, or nothing unless native.
streamadapt.sidecar.container: the container alone, as a mapping.
streamadapt.sidecar.volumes: the volumes it mounts, as list items (never empty).
*/}}
{{- define "streamadapt.sidecar.scope" -}}
{{- if ne (toString (get (default dict .Values) "mode")) "sidecar" }}
{{- fail "the streamadapt.sidecar.* templates take the streamadapt chart's scope with mode: sidecar: include them with .Subcharts.streamadapt (or the dependency's alias) and set mode: sidecar in that chart's values" }}
{{- end }}
{{- end }}

{{- define "streamadapt.sidecar.container" -}}
{{- include "streamadapt.sidecar.scope" . }}
{{- include "streamadapt.container" . }}
{{- end }}

{{- define "streamadapt.sidecar.containers" -}}
{{- include "streamadapt.sidecar.scope" . }}
{{- if not .Values.sidecar.native -}}
- {{ include "streamadapt.container" . | indent 2 | trim }}
{{- end }}
{{- end }}

{{- define "streamadapt.sidecar.initContainers" -}}
{{- include "streamadapt.sidecar.scope" . }}
{{- if .Values.sidecar.native -}}
- {{ include "streamadapt.container" . | indent 2 | trim }}
{{- end }}
{{- end }}

{{- define "streamadapt.sidecar.volumes" -}}
{{- include "streamadapt.sidecar.scope" . }}
{{- include "streamadapt.volumes" . }}
{{- end }}
