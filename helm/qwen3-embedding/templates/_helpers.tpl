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

{{/*
Pod template labels: no chart version or app version, so a chart bump that changes nothing in the pod does
not roll it (a GPU pod restart reloads the model for minutes).
*/}}
{{- define "qwen3-embedding.podLabels" -}}
{{ include "qwen3-embedding.selectorLabels" . }}
app.kubernetes.io/part-of: qwen3-embedding
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
{{- /* 127.0.0.1, not localhost: Triton's gRPC listens on IPv4 loopback only. */}}
{{- printf "127.0.0.1:%d" (int .Values.triton.grpcPort) }}
{{- end }}
{{- end }}

{{- define "qwen3-embedding.claimName" -}}
{{- if .Values.modelRepository.existingClaim }}
{{- .Values.modelRepository.existingClaim }}
{{- else }}
{{- printf "%s-models" (include "qwen3-embedding.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The served repository inside the volume: <modelRepository.subPath>/<model.version>. Each export writes a new
version directory; the pods mount the one model.version names, so switching and rolling back is a values
change (old versions stay on the volume until you delete them).
*/}}
{{- define "qwen3-embedding.repoSubPath" -}}
{{- $parts := list }}
{{- with trimAll "/" .Values.modelRepository.subPath }}{{ $parts = append $parts . }}{{ end }}
{{- with trimAll "/" (toString .Values.model.version) }}{{ $parts = append $parts . }}{{ end }}
{{- join "/" $parts }}
{{- end }}

{{/* The version the export Job writes: exportJob.version, else model.version (the one served). */}}
{{- define "qwen3-embedding.exportVersion" -}}
{{- default (toString .Values.model.version) (toString .Values.exportJob.version) }}
{{- end }}

{{/* The repository directory as seen by the export Job, which mounts the whole volume at /workspace. */}}
{{- define "qwen3-embedding.exportOutput" -}}
{{- $parts := list (trimAll "/" .Values.modelRepository.subPath) }}
{{- with include "qwen3-embedding.exportVersion" . }}{{ $parts = append $parts . }}{{ end }}
{{- printf "/workspace/%s" (join "/" $parts) }}
{{- end }}

{{/*
TensorRT engine cache: a writable directory of the model volume, per model version
(<subPath>/.trt-cache/<version>). Called with (dict "root" . "version" <version>).
*/}}
{{- define "qwen3-embedding.trtCacheSubPath" -}}
{{- $parts := list }}
{{- with trimAll "/" .root.Values.modelRepository.subPath }}{{ $parts = append $parts . }}{{ end }}
{{- $parts = append $parts ".trt-cache" }}
{{- with trimAll "/" (toString .version) }}{{ $parts = append $parts . }}{{ end }}
{{- join "/" $parts }}
{{- end }}

{{- define "qwen3-embedding.trtCacheMount" -}}
/var/cache/trt-engines
{{- end }}

{{/* Whether an export setting (an item of qwen3-embedding.models' `export`) makes TensorRT engines. */}}
{{- define "qwen3-embedding.usesTensorrt" -}}
{{- if or (eq (toString .accelerator) "tensorrt") (eq (toString .backend) "tensorrt") }}true{{ end }}
{{- end }}

{{/* The engine cache lives on the model volume when Triton runs here and an export uses TensorRT. */}}
{{- define "qwen3-embedding.trtCacheOnVolume" -}}
{{- $trt := false }}
{{- range (include "qwen3-embedding.models" . | fromJson).models }}
{{- if and .export (include "qwen3-embedding.usesTensorrt" .export) }}{{ $trt = true }}{{ end }}
{{- end }}
{{- if and (include "qwen3-embedding.tritonInPod" .) .Values.triton.engineCacheOnVolume $trt }}true{{ end }}
{{- end }}

{{/*
Every model this release serves, as JSON {"models": [...]}: the default embedding model (model.name, exported
with exportJob's settings) first, then extraModels in order. Each item: name (the Triton model), extra, export
(the `qwen3-embed export` settings: an extraModels entry's export fields over exportJob's; absent for an entry
without `export`, which must already be in the repository) and, for an exported extra model, container (the
export Job's init container that exports it). Fails on a repeated name or container name.
*/}}
{{- define "qwen3-embedding.models" -}}
{{- $job := .Values.exportJob }}
{{- $keys := list "model" "backend" "precision" "quantMethod" "quantBlockSize" "quantActivations" "accelerator" "maxBatchSize" "maxTokens" "extraArgs" }}
{{- $default := dict }}
{{- range $keys }}{{ $_ := set $default . (get $job .) }}{{ end }}
{{- $models := list (dict "name" .Values.model.name "extra" false "export" $default) }}
{{- $names := list .Values.model.name }}
{{- $containers := list "export" }}
{{- range $i, $m := .Values.extraModels }}
{{- if has $m.name $names }}
{{- fail (printf "extraModels[%d].name %q is already served (model.name or an earlier entry): each model needs its own Triton name" $i $m.name) }}
{{- end }}
{{- $names = append $names $m.name }}
{{- $entry := dict "name" $m.name "extra" true }}
{{- with $m.export }}
{{- $export := dict }}
{{- range $keys }}{{ $_ := set $export . (ternary (get $m.export .) (get $job .) (hasKey $m.export .)) }}{{ end }}
{{- $container := printf "export-%s" ($m.name | lower | replace "_" "-") | trunc 63 | trimSuffix "-" }}
{{- if has $container $containers }}
{{- fail (printf "extraModels[%d].name %q gives the export container name %q of another model: names that differ only in case or _ versus - cannot share the export Job" $i $m.name $container) }}
{{- end }}
{{- $containers = append $containers $container }}
{{- $_ := set $entry "export" $export }}
{{- $_ := set $entry "container" $container }}
{{- end }}
{{- $models = append $models $entry }}
{{- end }}
{{- toJson (dict "models" $models) }}
{{- end }}

{{/* Triton names of every served model, default first. */}}
{{- define "qwen3-embedding.modelNames" -}}
{{- $names := list }}
{{- range (include "qwen3-embedding.models" . | fromJson).models }}{{ $names = append $names .name }}{{ end }}
{{- join "," $names }}
{{- end }}

{{/* A memory quantity in GiB (Ti, Gi, Mi suffixes); -1 for any other form (not checked). */}}
{{- define "qwen3-embedding.quantityGiB" -}}
{{- $q := toString . }}
{{- $gib := -1.0 }}
{{- if hasSuffix "Gi" $q }}{{ $gib = float64 (trimSuffix "Gi" $q) }}{{ else if hasSuffix "Ti" $q }}{{ $gib = mulf (float64 (trimSuffix "Ti" $q)) 1024 }}{{ else if hasSuffix "Mi" $q }}{{ $gib = divf (float64 (trimSuffix "Mi" $q)) 1024 }}{{ end }}
{{- $gib }}
{{- end }}

{{/*
GiB of weights Triton holds for an export setting (fp16/bf16: 0.6B 1.11, 4B 7.49, 8B 14.1 GiB, the figures of
presets/ and export/memory.py; fp32 twice that); 0 when the size is not in the model id. Rerankers count the
same: their graph keeps the backbone and two LM-head rows. int8 / int4 (block size 32), as the export writes
them: the float16 embedding table + the linear layers at 8 / 4 bits with a float32 scale and a zero point per 32
weights (1.16 / 0.64 bytes a weight) + the rotary caches: 0.6B 0.78 / 0.57, 4B 4.66 / 2.92, 8B 8.66 / 5.33 GiB,
all computed (export/memory.py quantized_weight_bytes, rounded up to 0.01 GiB; tests/deployment/test_helm.py
pins them to it; a 0.6B int4 graph with 8,192 rotary positions measured 0.56 GiB on disk, docs/export.md, as
computed). Exports before 2026-12-05 kept the table in float32 (0.6B measured 1.07 / 0.86 GiB): for those
these figures are low by half the table (0.29 / 0.72 / 1.16 GiB); re-exporting makes them right. Larger blocks
are a little smaller: the block-32 figures are the safe side.
*/}}
{{- define "qwen3-embedding.weightsGiB" -}}
{{- $gib := 0.0 }}
{{- $model := toString .model }}
{{- $sizes := dict "fp16" (list 1.11 7.49 14.1) "int8" (list 0.78 4.66 8.66) "int4" (list 0.57 2.92 5.33) }}
{{- $row := get $sizes (toString .precision) | default (get $sizes "fp16") }}
{{- if regexMatch "(?i)-0[.]6B($|[^0-9])" $model }}{{ $gib = index $row 0 }}{{ else if regexMatch "(?i)-4B($|[^0-9])" $model }}{{ $gib = index $row 1 }}{{ else if regexMatch "(?i)-8B($|[^0-9])" $model }}{{ $gib = index $row 2 }}{{ end }}
{{- if eq (toString .precision) "fp32" }}{{ $gib = mulf $gib 2 }}{{ end }}
{{- $gib }}
{{- end }}

{{/* Whether this release can run more than one server pod at a time. */}}
{{- define "qwen3-embedding.multiReplica" -}}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.maxReplicas) 1 }}true{{ end }}
{{- else if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}

{{/* Startup budget of the Triton container in seconds (periodSeconds x failureThreshold). */}}
{{- define "qwen3-embedding.startupBudget" -}}
{{- $p := default dict .Values.triton.startupProbe }}
{{- mul (int (default 10 $p.periodSeconds)) (int (default 3 $p.failureThreshold)) }}
{{- end }}

{{/*
Deployment progress deadline: the value, else the Triton startup budget + the init container's wait for
the export (when the export Job is on) + 10 minutes for image pulls and scheduling.
*/}}
{{- define "qwen3-embedding.progressDeadline" -}}
{{- if .Values.progressDeadlineSeconds }}
{{- .Values.progressDeadlineSeconds }}
{{- else }}
{{- $s := add (include "qwen3-embedding.startupBudget" . | int) 600 }}
{{- if include "qwen3-embedding.exportInPod" . }}{{ $s = add $s (int (default 7200 .Values.exportJob.activeDeadlineSeconds)) }}
{{- else if .Values.exportJob.enabled }}{{ $s = add $s (int .Values.exportJob.waitSeconds) }}{{ end }}
{{- $s }}
{{- end }}
{{- end }}

{{- define "qwen3-embedding.exportImage" -}}
{{- $image := .Values.exportJob.image }}
{{- $tag := default .Chart.AppVersion $image.tag | toString }}
{{- if eq .Values.exportJob.device "gpu" }}
{{- $image = .Values.exportJob.gpu.image }}
{{- $tag = default (printf "%s-cuda" .Chart.AppVersion) $image.tag | toString }}
{{- end }}
{{- printf "%s:%s" $image.repository $tag }}
{{- end }}

{{- define "qwen3-embedding.apiKeysSecretName" -}}
{{- default (printf "%s-api-keys" (include "qwen3-embedding.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* Where the facade reads its TLS Secret (tls.crt, tls.key, ca.crt). */}}
{{- define "qwen3-embedding.tlsDir" -}}
/etc/qwen3-embed/tls
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
{{/*
A facade probe: `probe` as given when it has a handler; otherwise httpGet on the plaintext metrics port
(/health/ready for `kind` readiness, else /health/live) or, with metricsPort 0, native gRPC health. Fails
for probes the kubelet cannot run: gRPC probes speak no TLS, HTTP probes carry no client certificate.
*/}}
{{- define "qwen3-embedding.facadeProbe" -}}
{{- $facade := .root.Values.facade }}
{{- $probe := deepCopy .probe }}
{{- $ready := eq .kind "readiness" }}
{{- $handled := false }}
{{- range list "grpc" "httpGet" "exec" "tcpSocket" }}
{{- if hasKey $probe . }}{{ $handled = true }}{{ end }}
{{- end }}
{{- if not $handled }}
{{- if $facade.metricsPort }}
{{- $_ := set $probe "httpGet" (dict "path" (ternary "/health/ready" "/health/live" $ready) "port" "metrics") }}
{{- else }}
{{- $_ := set $probe "grpc" (ternary (dict) (dict "service" "liveness") $ready) }}
{{- end }}
{{- end }}
{{- if hasKey $probe "grpc" }}
{{- if $facade.tls.enabled }}
{{- fail (printf "facade.%sProbe: Kubernetes gRPC probes cannot speak TLS; set facade.metricsPort (plaintext /health/*)" .kind) }}
{{- end }}
{{- $grpc := default dict $probe.grpc }}
{{- if not $grpc.port }}
{{- $_ := set $grpc "port" (int $facade.grpcPort) }}
{{- end }}
{{- $_ := set $probe "grpc" $grpc }}
{{- end }}
{{- if and (hasKey $probe "httpGet") $facade.tls.enabled }}
{{- $port := toString (default "" $probe.httpGet.port) }}
{{- $https := eq (toString (default "HTTP" $probe.httpGet.scheme)) "HTTPS" }}
{{- if and (or (eq $port "http") (eq $port (toString $facade.httpPort))) (or $facade.tls.clientAuth (not $https)) }}
{{- fail (printf "facade.%sProbe: with facade.tls the HTTP port needs scheme HTTPS, and with clientAuth a client certificate the kubelet cannot send; probe the plaintext facade.metricsPort" .kind) }}
{{- end }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/*
`qwen3-embed export` arguments of one model: (dict "root" . "name" <Triton name> "export" <its export settings
from qwen3-embedding.models>).
*/}}
{{- define "qwen3-embedding.exportArgs" -}}
{{- $e := .export -}}
- --model
- {{ $e.model | quote }}
- --output
- {{ include "qwen3-embedding.exportOutput" .root | quote }}
- --name
- {{ .name | quote }}
- --backend
- {{ $e.backend | quote }}
- --precision
- {{ $e.precision | quote }}
{{- if has (toString $e.precision) (list "int8" "int4") }}
- --quant-method
- {{ $e.quantMethod | default "rtn" | quote }}
- --quant-block-size
- {{ $e.quantBlockSize | default 32 | int | quote }}
- --quant-activations
- {{ $e.quantActivations | default "fp32" | quote }}
{{- end }}
- --max-batch-size
- {{ $e.maxBatchSize | int | quote }}
- --max-tokens
- {{ $e.maxTokens | int | quote }}
- --accelerator
- {{ $e.accelerator | quote }}
- --device
- {{ ternary "cuda" "cpu" (eq .root.Values.exportJob.device "gpu") | quote }}
{{- if and (include "qwen3-embedding.trtCacheOnVolume" .root) (include "qwen3-embedding.usesTensorrt" $e) }}
- --trt-engine-cache
- {{ include "qwen3-embedding.trtCacheMount" .root | quote }}
{{- end }}
{{- range $e.extraArgs }}
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

{{/* A value as a facade variable's text: lists joined by commas, whole numbers without a decimal point. */}}
{{- define "qwen3-embedding.envText" -}}
{{- if kindIs "slice" . -}}
{{- join "," . -}}
{{- else if and (kindIs "float64" .) (eq . (float64 (int64 .))) -}}
{{- int64 . | toString -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end }}

{{/*
The typed facade values -> QWEN3_EMBED_* variables: [variable, value, the facade's own default, value path].
A variable is written only when its value differs from the facade's default (tests/deployment/test_helm.py
checks these defaults against service/settings.py and values.yaml), so a default render has the env it had
before these values existed, and a value left at its default never shadows the same variable set in
facade.settings or facade.extraEnv. Set here and there too, the render fails: one source per setting.
*/}}
{{- define "qwen3-embedding.facadeTypedEnv" -}}
{{- $f := .Values.facade -}}
{{- /* Absent under `helm upgrade --reuse-values` from a release of chart 0.2 / 0.3, whose values predate these
keys (Helm then keeps the old chart's defaults, not this values.yaml): such a row is the facade's default. */ -}}
{{- $p := $f.priority | default dict -}}
{{- $t := $f.tracing | default dict -}}
{{- $rows := list
  (list "PRIORITY_CLASSES" $p.classes "true" "facade.priority.classes")
  (list "BULK_CALLS_IN_FLIGHT" $p.bulkCallsInFlight "1" "facade.priority.bulkCallsInFlight")
  (list "BULK_TOKEN_BUDGET" $p.bulkTokenBudget "2048" "facade.priority.bulkTokenBudget")
  (list "BULK_WINDOW_S" $p.bulkWindowSeconds "2" "facade.priority.bulkWindowSeconds")
  (list "TRACING" $t.enabled "false" "facade.tracing.enabled")
  (list "OTLP_ENDPOINT" $t.otlpEndpoint "" "facade.tracing.otlpEndpoint")
  (list "TRACING_QUEUE_SPANS" $t.queueSpans "2048" "facade.tracing.queueSpans")
  (list "TRACING_EXPORT_TIMEOUT_S" $t.exportTimeoutSeconds "5" "facade.tracing.exportTimeoutSeconds")
  (list "EMBEDDING_CACHE_BYTES" $f.embeddingCacheBytes "0" "facade.embeddingCacheBytes")
-}}
{{- $elsewhere := list -}}
{{- range $key, $_ := ($f.settings | default dict) }}{{ $elsewhere = append $elsewhere (printf "QWEN3_EMBED_%s" (upper $key)) }}{{ end -}}
{{- range ($f.extraEnv | default list) }}{{ $elsewhere = append $elsewhere .name }}{{ end -}}
{{- range $rows }}
{{- $name := printf "QWEN3_EMBED_%s" (index . 0) }}
{{- $text := include "qwen3-embedding.envText" (index . 1) }}
{{- if and (not (kindIs "invalid" (index . 1))) (ne $text (index . 2)) }}
{{- if has $name $elsewhere }}
{{- fail (printf "%s sets %s, and facade.settings or facade.extraEnv sets it too; keep one" (index . 3) $name) }}
{{- end }}
- name: {{ $name }}
  value: {{ $text | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A memory quantity in bytes: a plain number, or one with a binary (Ki, Mi, Gi, Ti, Pi) or decimal (k, M, G, T, P)
suffix; -1 for any other form.
*/}}
{{- define "qwen3-embedding.quantityBytes" -}}
{{- $q := toString . -}}
{{- $units := list (list "Ki" 1024.0) (list "Mi" 1048576.0) (list "Gi" 1073741824.0) (list "Ti" 1099511627776.0) (list "Pi" 1125899906842624.0) (list "k" 1000.0) (list "M" 1000000.0) (list "G" 1000000000.0) (list "T" 1000000000000.0) (list "P" 1000000000000000.0) -}}
{{- $bytes := -1.0 -}}
{{- $number := "^[0-9]+(\\.[0-9]+)?$" -}}
{{- if regexMatch $number $q -}}
{{- $bytes = float64 $q -}}
{{- else -}}
{{- range $units -}}
{{- $digits := trimSuffix (index . 0) $q -}}
{{- if and (lt $bytes 0.0) (hasSuffix (index . 0) $q) (regexMatch $number $digits) -}}
{{- $bytes = mulf (float64 $digits) (index . 1) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if lt $bytes 0.0 }}-1{{ else }}{{ ceil $bytes | int64 }}{{ end -}}
{{- end }}

{{/* A CPU quantity ("4", 4, "1.5", "500m") as a number of cores. */}}
{{- define "qwen3-embedding.cpuCores" -}}
{{- $q := toString . -}}
{{- if hasSuffix "m" $q -}}
{{- divf (trimSuffix "m" $q | float64) 1000 -}}
{{- else -}}
{{- $q | float64 -}}
{{- end -}}
{{- end }}

{{/*
The facade's resources, with requests.cpu following the worker processes when not set: facade.workers, or
for 0 (auto: one per CPU of the CPU limit, at most 8) that count, or 1 without a CPU limit. More workers than
the CPU limit fail the render. With facade.embeddingCacheBytes, the memory request and limit (where set) grow
by that many bytes per worker process, rounded up to MiB.
*/}}
{{- define "qwen3-embedding.facadeResources" -}}
{{- $res := deepCopy (.Values.facade.resources | default dict) -}}
{{- $requests := get $res "requests" | default dict -}}
{{- $limits := get $res "limits" | default dict -}}
{{- $workers := .Values.facade.workers | default 0 | int -}}
{{- $limit := 0.0 -}}
{{- if get $limits "cpu" -}}
{{- $limit = include "qwen3-embedding.cpuCores" (get $limits "cpu") | float64 -}}
{{- end -}}
{{- if and $workers $limit (gt (float64 $workers) $limit) -}}
{{- fail (printf "facade.workers (%d) is more than facade.resources.limits.cpu (%v): each worker process wants a CPU; raise the limit or lower facade.workers" $workers (get $limits "cpu")) -}}
{{- end -}}
{{- $processes := 1 -}}
{{- if $workers -}}
{{- $processes = $workers -}}
{{- else if $limit -}}
{{- $processes = max 1 (min 8 (int (floor $limit))) -}}
{{- end -}}
{{- if not (get $requests "cpu") -}}
{{- $_ := set $requests "cpu" (toString $processes) -}}
{{- end -}}
{{- /* The embedding cache is per worker process and on top of what the memory values were sized for. */ -}}
{{- $cache := .Values.facade.embeddingCacheBytes | default 0 | int64 -}}
{{- if gt $cache 0 -}}
{{- range $side, $quantities := dict "requests" $requests "limits" $limits -}}
{{- with get $quantities "memory" -}}
{{- $bytes := include "qwen3-embedding.quantityBytes" . | int64 -}}
{{- if lt $bytes 0 -}}
{{- fail (printf "facade.resources.%s.memory %q: give it as bytes or with a Ki/Mi/Gi/Ti or k/M/G/T suffix, so the chart can add facade.embeddingCacheBytes to it" $side (toString .)) -}}
{{- end -}}
{{- $total := add $bytes (mul $processes $cache) -}}
{{- $_ := set $quantities "memory" (printf "%dMi" (div (add $total 1048575) 1048576)) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $res "limits" $limits -}}
{{- end -}}
{{- $_ := set $res "requests" $requests -}}
{{- toYaml $res -}}
{{- end }}

{{/*
Fails unless the cluster serves an optional API kind ("group/version/Kind"): an object of a kind without its CRD
fails the whole install with "no matches for kind". (dict "root" . "api" <group/version/Kind> "what" <the value
that asked for it> "hint" <what installs it>). `assumeApiVersions` (or `helm template --api-versions`) states it
for renders that cannot see the cluster.
*/}}
{{- define "qwen3-embedding.requireApi" -}}
{{- $root := .root }}
{{- if not (or ($root.Capabilities.APIVersions.Has .api) (has .api (default list $root.Values.assumeApiVersions))) }}
{{- fail (printf "%s needs the %s API, which this cluster does not serve (install %s), or add %q to assumeApiVersions / pass --api-versions %s to helm template" .what .api .hint .api .api) }}
{{- end }}
{{- end }}

{{/*
Resources with requests equal to limits (Guaranteed QoS, qosGuaranteed): CPU from the request (the share the
container is sized for), memory from the limit (the bound it must not pass), any other resource (nvidia.com/gpu)
from the limit. A GPU pod that is Guaranteed is the last the kubelet evicts under memory pressure.
*/}}
{{- define "qwen3-embedding.guaranteed" -}}
{{- $res := deepCopy (default dict .) -}}
{{- $requests := default dict (get $res "requests") -}}
{{- $limits := default dict (get $res "limits") -}}
{{- $cpu := default (get $limits "cpu") (get $requests "cpu") -}}
{{- $memory := default (get $requests "memory") (get $limits "memory") -}}
{{- if $cpu }}{{ $_ := set $requests "cpu" $cpu }}{{ $_ := set $limits "cpu" $cpu }}{{ end -}}
{{- if $memory }}{{ $_ := set $requests "memory" $memory }}{{ $_ := set $limits "memory" $memory }}{{ end -}}
{{- range $k, $v := $limits }}{{ if and $v (not (has $k (list "cpu" "memory"))) }}{{ $_ := set $requests $k $v }}{{ end }}{{ end -}}
{{- range $k, $v := $requests }}{{ if not $v }}{{ $_ := unset $requests $k }}{{ end }}{{ end -}}
{{- range $k, $v := $limits }}{{ if not $v }}{{ $_ := unset $limits $k }}{{ end }}{{ end -}}
{{- toYaml (dict "requests" $requests "limits" $limits) -}}
{{- end }}

{{/* Whether the server pod holds a GPU (nvidia.com/gpu or a MIG slice, nvidia.com/mig-*) for its Triton. */}}
{{- define "qwen3-embedding.gpuPod" -}}
{{- if include "qwen3-embedding.tritonInPod" . }}
{{- range $k, $v := (dig "limits" dict (default dict .Values.triton.resources)) }}{{ if and $v (hasPrefix "nvidia.com/" $k) }}true{{ end }}{{ end }}
{{- end }}
{{- end }}

{{/*
A server-pod container's resources: Guaranteed with qosGuaranteed (default) when the pod holds a GPU, else as
given (a CPU-only Triton keeps its burstable CPU).
*/}}
{{- define "qwen3-embedding.podResources" -}}
{{- if and .root.Values.qosGuaranteed (include "qwen3-embedding.gpuPod" .root) }}
{{- include "qwen3-embedding.guaranteed" .resources }}
{{- else }}
{{- toYaml .resources }}
{{- end }}
{{- end }}

{{/*
The model volume's claim as the cluster has it, as JSON {"exists", "size", "accessModes"}: lookup (install and
upgrade against a cluster), else clusterState.modelClaim (helm template, Argo CD and tests, where lookup finds
nothing).
*/}}
{{- define "qwen3-embedding.modelClaim" -}}
{{- $name := include "qwen3-embedding.claimName" . }}
{{- $live := lookup "v1" "PersistentVolumeClaim" .Release.Namespace $name }}
{{- $out := dict "exists" false "size" "" "accessModes" list }}
{{- if $live }}
{{- $_ := set $out "exists" true }}
{{- $_ := set $out "size" (dig "spec" "resources" "requests" "storage" "" $live) }}
{{- $_ := set $out "accessModes" (dig "spec" "accessModes" list $live) }}
{{- else if .Values.clusterState.modelClaim }}
{{- $c := .Values.clusterState.modelClaim }}
{{- $_ := set $out "exists" true }}
{{- $_ := set $out "size" (default "" $c.size) }}
{{- $_ := set $out "accessModes" (default list $c.accessModes) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
The model volume's access modes: the live claim's when it exists (they cannot change), else what the chart will
create; for an existingClaim nobody stated, ReadWriteOnce (the safe assumption: helm template and Argo CD cannot
look it up).
*/}}
{{- define "qwen3-embedding.accessModes" -}}
{{- $claim := include "qwen3-embedding.modelClaim" . | fromJson }}
{{- if $claim.exists }}
{{- toJson $claim.accessModes }}
{{- else if .Values.modelRepository.existingClaim }}
{{- toJson (list "ReadWriteOnce") }}
{{- else }}
{{- toJson .Values.modelRepository.persistence.accessModes }}
{{- end }}
{{- end }}

{{/* Whether pods on several nodes can mount the model volume at once. */}}
{{- define "qwen3-embedding.sharedVolume" -}}
{{- $modes := include "qwen3-embedding.accessModes" . | fromJsonArray }}
{{- if and (or (has "ReadWriteMany" $modes) (has "ReadOnlyMany" $modes)) (not (has "ReadWriteOncePod" $modes)) }}true{{ end }}
{{- end }}

{{/*
The export runs in the server pod (init containers on the pod's own GPU) instead of a Job: exportJob.device=gpu.
A Job beside the server would need a second GPU on the node, which one-GPU nodes do not have.
*/}}
{{- define "qwen3-embedding.exportInPod" -}}
{{- if and .Values.exportJob.enabled (eq .Values.exportJob.device "gpu") }}true{{ end }}
{{- end }}

{{/*
A Triton probe: an httpGet on Triton's HTTP port becomes an exec that asks Triton over the pod's loopback (Triton's
HTTP listens on 127.0.0.1 only, out of reach of other pods and of the kubelet's own HTTP probes), with bash's
/dev/tcp (the NGC image has bash, not always curl). Any other handler is kept.
*/}}
{{- define "qwen3-embedding.tritonProbe" -}}
{{- $probe := deepCopy .probe }}
{{- if hasKey $probe "httpGet" }}
{{- $path := default "/v2/health/ready" $probe.httpGet.path }}
{{- $port := int .root.Values.triton.httpPort }}
{{- $script := printf "exec 3<>/dev/tcp/127.0.0.1/%d && printf 'GET %s HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '" $port $path }}
{{- $_ := unset $probe "httpGet" }}
{{- $_ := set $probe "exec" (dict "command" (list "/bin/bash" "-c" $script)) }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/*
A served name that names another Qwen3 model than the export source (e.g. Qwen3-Embedding-8B over a 4B export)
fails the render; the facade refuses it at start too (service/model_identity.py). "" when they agree.
*/}}
{{- define "qwen3-embedding.servedNameClash" -}}
{{- $re := "(?i)qwen3-(embedding|reranker)-[0-9.]+b" }}
{{- $served := toString .Values.model.servedName }}
{{- $source := toString .Values.exportJob.model }}
{{- if and $served .Values.exportJob.enabled (regexMatch $re $served) (regexMatch $re $source) }}
{{- $a := regexFind $re $served | lower }}
{{- $b := regexFind $re $source | lower }}
{{- if ne $a $b }}model.servedName {{ $served }} names another model than the export source exportJob.model {{ $source }}{{ end }}
{{- end }}
{{- end }}

{{/*
Refuses values that lack keys the templates read. `helm upgrade --reuse-values` keeps the values of the
release's own chart, defaults included, not this chart's values.yaml: from a release of chart 0.1 (which had
none of these keys) a template would stop at a nil pointer. Keys added since 0.2 are read with their defaults
instead (facadeTypedEnv; exportJob.quantMethod / quantBlockSize / quantActivations), so 0.2 and 0.3 releases
upgrade as they are.
Included first in every template: Helm stops at the first template that fails, whichever it renders first.
*/}}
{{- define "qwen3-embedding.valuesFromThisChart" -}}
{{- $missing := list -}}
{{- range $path := list
  "assumeApiVersions"
  "autoscaling.keda"
  "clusterState"
  "exportJob.device"
  "exportJob.gpu"
  "exportJob.helmHook"
  "exportJob.skipIfPresent"
  "exportJob.version"
  "exportJob.waitSeconds"
  "extraModels"
  "facade.logFormat"
  "facade.metricsPort"
  "facade.tls"
  "facade.workers"
  "grpcRoute"
  "httpIngress"
  "httpRoute"
  "ingress"
  "model.version"
  "modelRepository.allowSingleNodeReplicas"
  "modelRepository.prepopulated"
  "networkPolicy"
  "qosGuaranteed"
  "rerankModel"
  "runtimeClassName"
  "triton.engineCacheOnVolume"
-}}
{{- $node := $.Values -}}
{{- $found := true -}}
{{- range $key := splitList "." $path -}}
{{- if and $found (kindIs "map" $node) (hasKey $node $key) -}}
{{- $node = index $node $key -}}
{{- else -}}
{{- $found = false -}}
{{- end -}}
{{- end -}}
{{- if not $found }}{{ $missing = append $missing $path }}{{ end -}}
{{- end -}}
{{- if $missing -}}
{{- fail (printf "the values lack %s: they come from an older chart (0.1.x), whose values and defaults `helm upgrade --reuse-values` keeps. Upgrade with --reset-then-reuse-values (Helm >= 3.14), or with -f your own values and without --reuse-values (chart README, \"Upgrading from an older chart\")" (join ", " $missing)) -}}
{{- end -}}
{{- end }}
