{{/* Chart name, overridable. */}}
{{- define "qwen3-embedding.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart> unless the release name already contains the chart name. Truncated to 46
characters so that suffixed names (-export-<hash>, -headless, -metrics) stay within 63.
*/}}
{{- define "qwen3-embedding.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "qwen3-embedding.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "qwen3-embedding.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qwen3-embedding.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "qwen3-embedding.labels" -}}
helm.sh/chart: {{ include "qwen3-embedding.chart" . }}
{{ include "qwen3-embedding.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: qwen3-embedding
{{- end }}

{{- define "qwen3-embedding.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "qwen3-embedding.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "qwen3-embedding.facadeImage" -}}
{{- printf "%s:%s" .Values.facade.image.repository (default .Chart.AppVersion .Values.facade.image.tag | toString) }}
{{- end }}

{{- define "qwen3-embedding.exportImage" -}}
{{- printf "%s:%s" .Values.exportJob.image.repository (default .Chart.AppVersion .Values.exportJob.image.tag | toString) }}
{{- end }}

{{- define "qwen3-embedding.tritonImage" -}}
{{- printf "%s:%s%s" .Values.triton.image.repository (.Values.triton.image.tag | toString) .Values.triton.image.suffix }}
{{- end }}

{{/* Triton in this pod unless triton.external.enabled. */}}
{{- define "qwen3-embedding.tritonInPod" -}}
{{- if not .Values.triton.external.enabled }}true{{ end }}
{{- end }}

{{/* host:port of Triton's gRPC endpoint as the facade sees it. */}}
{{- define "qwen3-embedding.tritonUrl" -}}
{{- if .Values.triton.external.enabled }}
{{- required "triton.external.url (host:port of Triton's gRPC endpoint) is required when triton.external.enabled" .Values.triton.external.url }}
{{- else }}
{{- printf "localhost:%d" (int .Values.triton.grpcPort) }}
{{- end }}
{{- end }}

{{- define "qwen3-embedding.claimName" -}}
{{- if .Values.modelRepository.existingClaim }}
{{- .Values.modelRepository.existingClaim }}
{{- else }}
{{- printf "%s-models" (include "qwen3-embedding.fullname" .) }}
{{- end }}
{{- end }}

{{/* The repository directory as seen by the export Job, which mounts the whole volume at /workspace. */}}
{{- define "qwen3-embedding.exportOutput" -}}
{{- printf "/workspace/%s" (trimAll "/" .Values.modelRepository.subPath) }}
{{- end }}

{{- define "qwen3-embedding.apiKeysSecretName" -}}
{{- default (printf "%s-api-keys" (include "qwen3-embedding.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "qwen3-embedding.apiKeysDir" -}}
/etc/qwen3-embed/auth
{{- end }}

{{/*
Pod grace period: the facade's drain plus terminationGraceExtraSeconds, and at least Triton's preStop
sleep plus its exit timeout (and a little slack) so Triton can finish in-flight work before SIGKILL.
*/}}
{{- define "qwen3-embedding.terminationGracePeriod" -}}
{{- $drain := int (ceil .Values.facade.drainSeconds) }}
{{- $grace := add $drain (int .Values.terminationGraceExtraSeconds) }}
{{- if include "qwen3-embedding.tritonInPod" . }}
{{- $triton := add (include "qwen3-embedding.tritonPreStopSeconds" . | int) (int .Values.triton.exitTimeoutSeconds) 3 }}
{{- $grace = max $grace $triton }}
{{- end }}
{{- $grace }}
{{- end }}

{{/* Triton stays up this long after the pod is asked to stop, while the facade drains. */}}
{{- define "qwen3-embedding.tritonPreStopSeconds" -}}
{{- add (int (ceil .Values.facade.drainSeconds)) 2 }}
{{- end }}

{{/* Container security context: the shared one with a per-container override merged over it. */}}
{{- define "qwen3-embedding.securityContext" -}}
{{- $base := deepCopy .root.Values.containerSecurityContext }}
{{- toYaml (mergeOverwrite $base (deepCopy (default dict .override))) }}
{{- end }}

{{/* A facade probe; a grpc probe without a port gets the facade's gRPC port. */}}
{{- define "qwen3-embedding.facadeProbe" -}}
{{- $probe := deepCopy .probe }}
{{- if hasKey $probe "grpc" }}
{{- $grpc := default dict $probe.grpc }}
{{- if not $grpc.port }}
{{- $_ := set $grpc "port" (int .root.Values.facade.grpcPort) }}
{{- end }}
{{- $_ := set $probe "grpc" $grpc }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/* `qwen3-embed export` arguments. */}}
{{- define "qwen3-embedding.exportArgs" -}}
- --model
- {{ .Values.exportJob.model | quote }}
- --output
- {{ include "qwen3-embedding.exportOutput" . | quote }}
- --name
- {{ .Values.model.name | quote }}
- --backend
- {{ .Values.exportJob.backend | quote }}
- --precision
- {{ .Values.exportJob.precision | quote }}
- --max-batch-size
- {{ .Values.exportJob.maxBatchSize | int | quote }}
- --max-tokens
- {{ .Values.exportJob.maxTokens | int | quote }}
- --accelerator
- {{ .Values.exportJob.accelerator | quote }}
{{- range .Values.exportJob.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Facade settings map -> QWEN3_EMBED_* variables (lists joined by commas). */}}
{{- define "qwen3-embedding.facadeSettingsEnv" -}}
{{- range $key, $value := .Values.facade.settings }}
- name: {{ printf "QWEN3_EMBED_%s" ($key | upper) }}
  {{- if kindIs "slice" $value }}
  value: {{ join "," $value | quote }}
  {{- else if and (kindIs "float64" $value) (eq $value (float64 (int64 $value))) }}
  value: {{ int64 $value | toString | quote }}
  {{- else }}
  value: {{ $value | toString | quote }}
  {{- end }}
{{- end }}
{{- end }}
