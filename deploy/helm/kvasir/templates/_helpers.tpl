{{/*
Names, labels and the pieces every Kvasir container shares (image, probes, security context).
*/}}

{{- define "kvasir.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped base name; component names append "-coordinator", "-decode", ... */}}
{{- define "kvasir.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kvasir.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvasir.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kvasir.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kvasir.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kvasir
{{- end -}}

{{/* Labels of one component. Call with (dict "root" $ "component" "decode"). */}}
{{- define "kvasir.componentLabels" -}}
{{ include "kvasir.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kvasir.componentSelector" -}}
{{ include "kvasir.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The CPU image: coordinator, cachestore, and the workers of the cpu variant. */}}
{{- define "kvasir.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The workers' image: the CUDA build when device is cuda. */}}
{{- define "kvasir.workerImage" -}}
{{- if eq .Values.device "cuda" -}}
{{- printf "%s:%s" .Values.cudaImage.repository (default .Chart.AppVersion .Values.cudaImage.tag) -}}
{{- else -}}
{{- include "kvasir.image" . -}}
{{- end -}}
{{- end -}}

{{/*
The coordinator's RPC address: a headless Service that publishes the pod before it is ready
(the coordinator turns ready only once a worker registered through this address).
*/}}
{{- define "kvasir.coordinatorRpc" -}}
{{- printf "%s-coordinator-rpc:%d" (include "kvasir.fullname" .) (int .Values.coordinator.rpcPort) -}}
{{- end -}}

{{- define "kvasir.cachestoreRpc" -}}
{{- printf "%s-cachestore:%d" (include "kvasir.fullname" .) (int .Values.cachestore.port) -}}
{{- end -}}

{{- define "kvasir.apiKeySecretName" -}}
{{- if .Values.apiKeys.existingSecret -}}
{{- .Values.apiKeys.existingSecret -}}
{{- else -}}
{{- printf "%s-api-keys" (include "kvasir.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the coordinator gets an API key file: keys given, a Secret of yours, or none and
allowUnauthenticated false (then the chart generates one key).
*/}}
{{- define "kvasir.apiKeysEnabled" -}}
{{- if or .Values.apiKeys.existingSecret .Values.apiKeys.keys (not .Values.allowUnauthenticated) -}}true{{- end -}}
{{- end -}}

{{- define "kvasir.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "kvasir.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/*
Liveness on /health, readiness on the given path, and a start-up probe that gives model loading
its time. Call with (dict "port" "http" "ready" "/ready" "probes" .Values.probes).
*/}}
{{- define "kvasir.probes" -}}
startupProbe:
  httpGet:
    path: /health
    port: {{ .port }}
  periodSeconds: {{ .probes.startup.periodSeconds }}
  failureThreshold: {{ .probes.startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /health
    port: {{ .port }}
  periodSeconds: {{ .probes.liveness.periodSeconds }}
  timeoutSeconds: {{ .probes.liveness.timeoutSeconds }}
  failureThreshold: {{ .probes.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: {{ .ready }}
    port: {{ .port }}
  periodSeconds: {{ .probes.readiness.periodSeconds }}
  timeoutSeconds: {{ .probes.readiness.timeoutSeconds }}
  failureThreshold: {{ .probes.readiness.failureThreshold }}
{{- end -}}

{{/* Environment every Kvasir container gets. */}}
{{- define "kvasir.commonEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: KVASIR_LOG_LEVEL
  valueFrom:
    configMapKeyRef:
      name: {{ include "kvasir.fullname" . }}-config
      key: log-level
{{- end -}}

{{/* The volume of the model files, for pods where model.volume is set. */}}
{{- define "kvasir.modelVolume" -}}
- name: model
{{- toYaml .Values.model.volume | nindent 2 }}
{{- end -}}

{{- define "kvasir.modelVolumeMount" -}}
- name: model
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
{{- end -}}

{{/*
The settings of one worker group as YAML: workerDefaults, overridden by the role's own keys.
Call with (dict "root" $ "role" "decode") and read with fromYaml.
*/}}
{{- define "kvasir.workerValues" -}}
{{- $role := index .root.Values .role -}}
{{- $own := omit $role "enabled" "groups" "autoscaling" -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.workerDefaults) (deepCopy $own)) -}}
{{- end -}}

{{/*
The pod template of one worker of a group. Call with
(dict "root" $ "role" "decode" "w" $workerValues "gpus" N "lwsRole" ""|"leader"|"worker").
*/}}
{{- define "kvasir.workerPod" -}}
{{- $root := .root -}}
{{- $w := .w -}}
{{- $fullname := include "kvasir.fullname" $root -}}
{{- $ctx := dict "root" $root "component" .role -}}
{{- $cuda := eq $root.Values.device "cuda" -}}
metadata:
  labels:
    {{- include "kvasir.componentLabels" $ctx | nindent 4 }}
    {{- if .lwsRole }}
    kvasir.dev/lws-role: {{ .lwsRole }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    {{- with $w.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ $w.terminationGracePeriodSeconds }}
  securityContext:
    {{- include "kvasir.podSecurityContext" $root | nindent 4 }}
  containers:
    - name: worker
      image: {{ include "kvasir.workerImage" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      command: ["kvasir-entrypoint", "/etc/kvasir/config/{{ .role }}.args", "kvasir-worker"]
      args: ["--name=$(POD_NAME)", "--advertise-host=$(POD_IP)"]
      env:
        {{- include "kvasir.commonEnv" $root | nindent 8 }}
        - name: KVASIR_ROLE
          value: {{ .role }}
      ports:
        - name: rpc
          containerPort: {{ $w.port }}
          protocol: TCP
        - name: http
          containerPort: {{ $w.httpPort }}
          protocol: TCP
      {{- include "kvasir.probes" (dict "port" "http" "ready" "/ready" "probes" $root.Values.probes) | nindent 6 }}
      resources:
        {{- $res := deepCopy $w.resources }}
        {{- if $cuda }}
        {{- $limits := default (dict) $res.limits }}
        {{- $requests := default (dict) $res.requests }}
        {{- $_ := set $limits $root.Values.gpu.resourceName (int .gpus) }}
        {{- $_ := set $requests $root.Values.gpu.resourceName (int .gpus) }}
        {{- $_ := set $res "limits" $limits }}
        {{- $_ := set $res "requests" $requests }}
        {{- end }}
        {{- toYaml $res | nindent 8 }}
      securityContext:
        {{- include "kvasir.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/kvasir/config
          readOnly: true
        - name: kv-policies
          mountPath: /etc/kvasir/kv-policies
          readOnly: true
        - name: tmp
          mountPath: /tmp
        - name: shm
          mountPath: /dev/shm
        {{- if $root.Values.model.volume }}
        {{- include "kvasir.modelVolumeMount" $root | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ $fullname }}-config
    - name: kv-policies
      configMap:
        name: {{ $fullname }}-kv-policies
    - name: tmp
      emptyDir: {}
    - name: shm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $w.shmSize }}
    {{- if $root.Values.model.volume }}
    {{- include "kvasir.modelVolume" $root | nindent 4 }}
    {{- end }}
  {{- $nodeSelector := deepCopy (default (dict) $w.nodeSelector) }}
  {{- $tolerations := default (list) $w.tolerations }}
  {{- if $cuda }}
  {{- $nodeSelector = merge $nodeSelector (deepCopy $root.Values.gpu.nodeSelector) }}
  {{- $tolerations = concat $tolerations $root.Values.gpu.tolerations }}
  {{- end }}
  {{- with $nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $w.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
