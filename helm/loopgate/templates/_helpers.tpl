{{/* Chart name, truncated to fit a DNS label. */}}
{{- define "loopgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name; object names add a component suffix to it. */}}
{{- define "loopgate.fullname" -}}
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

{{- define "loopgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "loopgate.labels" -}}
helm.sh/chart: {{ include "loopgate.chart" . }}
app.kubernetes.io/name: {{ include "loopgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loopgate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels; pass (dict "root" $ "component" "gateway"). */}}
{{- define "loopgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loopgate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "loopgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "loopgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The model `helm test` asks for: tests.model, else the first model name. */}}
{{- define "loopgate.testModel" -}}
{{- if .Values.tests.model -}}
{{- .Values.tests.model -}}
{{- else -}}
{{- keys (include "loopgate.config" . | fromYaml).models | sortAlpha | first -}}
{{- end -}}
{{- end -}}

{{- define "loopgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Name of a policy version's vLLM Deployment and Service; pass (dict "root" $ "version" $v). */}}
{{- define "loopgate.vllmName" -}}
{{- printf "%s-vllm-%s" (include "loopgate.fullname" .root) .version.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Seconds before SIGKILL: preStop sleep + drain deadline + time to flush the event queue. */}}
{{- define "loopgate.gracePeriod" -}}
{{- $g := .Values.gateway -}}
{{- $floor := add $g.preStopSleepSeconds $g.drainSeconds -}}
{{- if kindIs "invalid" $g.terminationGracePeriodSeconds -}}
{{- add $floor 15 -}}
{{- else if le (int $g.terminationGracePeriodSeconds) (int $floor) -}}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + drainSeconds (%v), or in-flight streams are killed" $g.terminationGracePeriodSeconds $floor) -}}
{{- else -}}
{{- $g.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* The upstream pools: one per policy version, one per LoRA adapter (same endpoints). */}}
{{- define "loopgate.pools" -}}
{{- $root := . -}}
{{- $pools := dict -}}
{{- range $v := .Values.policyVersions -}}
{{- $port := $v.port | default $root.Values.vllm.port -}}
{{- $endpoint := printf "http://%s:%v" (include "loopgate.vllmName" (dict "root" $root "version" $v)) $port -}}
{{- $timeouts := $root.Values.vllm.upstreamTimeouts -}}
{{- $_ := set $pools $v.name (dict "endpoints" (list $endpoint) "served_model" ($v.servedModelName | default $v.name) "timeouts" $timeouts) -}}
{{- range $a := $v.adapters | default list -}}
{{- $_ := set $pools (printf "%s-%s" $v.name $a.name) (dict "endpoints" (list $endpoint) "served_model" $a.name "timeouts" $timeouts) -}}
{{- end -}}
{{- end -}}
{{- /* Upstreams deployed elsewhere (KServe, production-stack, plain vLLM): pools as given. */ -}}
{{- range $name, $p := .Values.externalPools -}}
{{- if hasKey $pools $name -}}
{{- fail (printf "externalPools.%s: a policy version (or adapter) already makes a pool of that name" $name) -}}
{{- end -}}
{{- $timeouts := mustMergeOverwrite (deepCopy $root.Values.vllm.upstreamTimeouts) ($p.timeouts | default dict) -}}
{{- $_ := set $pools $name (dict "endpoints" $p.endpoints "served_model" $p.servedModel "timeouts" $timeouts) -}}
{{- end -}}
{{- if not $pools -}}
{{- fail "no upstreams: list policyVersions (deployed by the chart) or externalPools (existing servers)" -}}
{{- end -}}
{{- toYaml $pools -}}
{{- end -}}

{{/* Redis URL in the config file (a Secret's URL overrides it through the environment). */}}
{{- define "loopgate.hasRedis" -}}
{{- if or .Values.redis.url .Values.secrets.redisUrl.secretName -}}true{{- end -}}
{{- end -}}

{{/* The gateway's config.yaml (no secrets: those arrive as environment variables). */}}
{{- define "loopgate.config" -}}
{{- $pools := include "loopgate.pools" . | fromYaml -}}
{{- $models := .Values.models -}}
{{- if not $models -}}
{{- $models = dict -}}
{{- range $pool := keys $pools -}}{{- $_ := set $models $pool (dict "pool" $pool) -}}{{- end -}}
{{- end -}}
{{- range $alias, $route := $models -}}
{{- if not (hasKey $pools $route.pool) -}}
{{- fail (printf "models.%s.pool: unknown pool %q (pools: %s)" $alias $route.pool (keys $pools | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}
{{- range $name, $evaluator := .Values.evaluators -}}
{{- if not (hasKey $pools $evaluator.pool) -}}
{{- fail (printf "evaluators.%s.pool: unknown pool %q (pools: %s)" $name $evaluator.pool (keys $pools | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}
{{- $flags := dict "source" "file" "path" "/etc/loopgate/flags.yaml" -}}
{{- if include "loopgate.hasRedis" . -}}
{{- /* An empty Redis store is seeded from flags.yaml; after that Redis is the truth. */ -}}
{{- $flags = dict "source" "redis" "path" "/etc/loopgate/flags.yaml" "seed_from_file" true -}}
{{- with .Values.redis.url -}}{{- $_ := set $flags "redis_url" . -}}{{- end -}}
{{- end -}}
{{- $events := dict "spool" (dict "dir" "/var/lib/loopgate/var/spool") -}}
{{- with .Values.kafka.bootstrapServers -}}
{{- $_ := set $events "kafka" (dict "bootstrap_servers" .) -}}
{{- end -}}
{{- $ids := dict "require_keys" (not (empty .Values.secrets.signingKeys.secretName)) -}}
{{- $config := dict
  "instance" (include "loopgate.fullname" .)
  "server" (dict "host" "0.0.0.0" "port" .Values.gateway.port "workers" .Values.gateway.workers "drain_seconds" .Values.gateway.drainSeconds)
  "pools" $pools
  "models" $models
  "flags" $flags
  "events" $events
  "ids" $ids
-}}
{{- with .Values.limits -}}{{- $_ := set $config "limits" . -}}{{- end -}}
{{- with .Values.evaluators -}}{{- $_ := set $config "evaluators" . -}}{{- end -}}
{{- with .Values.redis.url -}}{{- $_ := set $config "console" (dict "redis_url" .) -}}{{- end -}}
{{- $merged := mustMergeOverwrite $config (deepCopy .Values.gateway.config) -}}
{{- toYaml $merged -}}
{{- end -}}

{{/* Environment shared by the gateway and the controller: instance name and Secret refs. */}}
{{- define "loopgate.secretEnv" -}}
{{- range $key := list "signingKeys" "adminToken" "apiKeys" "redisUrl" }}
{{- $ref := index $.Values.secrets $key }}
{{- if $ref.secretName }}
- name: {{ $ref.env }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.secretName }}
      key: {{ $ref.key }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod and container security contexts for the Loopgate image. */}}
{{- define "loopgate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "loopgate.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Sanitised object-name suffix from a file path: "files/a/My_Board.json" -> "my-board". */}}
{{- define "loopgate.fileSlug" -}}
{{- $stem := base . | trimSuffix (ext .) | lower -}}
{{- $slug := regexReplaceAll "[^a-z0-9]+" $stem "-" | trunc 40 | trimAll "-" -}}
{{- required (printf "%s: no letters or digits to name its ConfigMap after" .) $slug -}}
{{- end -}}
