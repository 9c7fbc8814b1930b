{{/*
Every check on the values, gathered into one readable failure at render time.
Each message names the key and what to set.
*/}}
{{- define "batchgrid.validate" -}}
{{- $errors := list }}
{{- $c := .Values.config }}
{{- if not (lt (int $c.softTimeLimitSeconds) (int $c.hardTimeLimitSeconds)) }}
{{- $errors = append $errors (printf "config.softTimeLimitSeconds (%v) must be below config.hardTimeLimitSeconds (%v)" $c.softTimeLimitSeconds $c.hardTimeLimitSeconds) }}
{{- end }}
{{- if not (lt (int $c.hardTimeLimitSeconds) (int $c.visibilityTimeoutSeconds)) }}
{{- $errors = append $errors (printf "config.visibilityTimeoutSeconds (%v) must exceed config.hardTimeLimitSeconds (%v), or Redis redelivers tasks that are still running" $c.visibilityTimeoutSeconds $c.hardTimeLimitSeconds) }}
{{- end }}
{{- $grace := int (include "batchgrid.worker.gracePeriodSeconds" .) }}
{{- $soft := int .Values.worker.softShutdownSeconds }}
{{- if and (not $soft) (lt $grace (int $c.hardTimeLimitSeconds)) }}
{{- $errors = append $errors (printf "worker.terminationGracePeriodSeconds (%v) must be at least config.hardTimeLimitSeconds (%v): a shorter grace period kills running tasks on every rollout; set 0 to derive it, or set worker.softShutdownSeconds to hand long tasks back instead" $grace $c.hardTimeLimitSeconds) }}
{{- end }}
{{- if and $soft (lt $grace (add $soft 10)) }}
{{- $errors = append $errors (printf "worker.terminationGracePeriodSeconds (%v) must exceed worker.softShutdownSeconds (%v) by at least 10 s, the time to hand running tasks back; set 0 to derive it" $grace $soft) }}
{{- end }}
{{- if and $soft (ge $soft (int $c.hardTimeLimitSeconds)) }}
{{- $errors = append $errors (printf "worker.softShutdownSeconds (%v) must be below config.hardTimeLimitSeconds (%v); set 0 to let running tasks finish instead" $soft $c.hardTimeLimitSeconds) }}
{{- end }}
{{- $hb := .Values.worker.heartbeat }}
{{- if lt (float64 $hb.maxAgeSeconds) (mulf 3 $hb.intervalSeconds) }}
{{- $errors = append $errors (printf "worker.heartbeat.maxAgeSeconds (%v) must be at least 3 x worker.heartbeat.intervalSeconds (%v), or a busy worker is restarted" $hb.maxAgeSeconds $hb.intervalSeconds) }}
{{- end }}
{{- $enabledQueues := 0 }}
{{- range $key, $queue := .Values.worker.queues }}
{{- if $queue.enabled }}{{ $enabledQueues = add1 $enabledQueues }}{{ end }}
{{- if and $queue.enabled (not $queue.name) }}
{{- $errors = append $errors (printf "worker.queues.%s.name is empty; name the queue" $key) }}
{{- end }}
{{- end }}
{{- if eq $enabledQueues 0 }}
{{- $errors = append $errors "worker.queues: no queue is enabled; enable images or tables" }}
{{- end }}
{{- if and .Values.redis.enabled .Values.externalRedis.host }}
{{- $errors = append $errors "externalRedis.host is set while redis.enabled is true; set redis.enabled=false to use the external server" }}
{{- end }}
{{- if and (not .Values.redis.enabled) (not .Values.externalRedis.host) }}
{{- $errors = append $errors "redis.enabled is false but externalRedis.host is empty; set externalRedis.host (and externalRedis.existingSecret for its password)" }}
{{- end }}
{{- $s := .Values.storage }}
{{- if not (has $s.type (list "pvc" "hostPath" "s3")) }}
{{- $errors = append $errors (printf "storage.type %q is unknown; use pvc, hostPath or s3" $s.type) }}
{{- end }}
{{- if and (eq $s.type "hostPath") (not $s.hostPath.path) }}
{{- $errors = append $errors "storage.type is hostPath but storage.hostPath.path is empty; name the folder on the node" }}
{{- end }}
{{- if and (eq $s.type "s3") (or (not $s.s3.bucket) (not $s.s3.existingSecret)) }}
{{- $errors = append $errors "storage.type is s3: set storage.s3.bucket and storage.s3.existingSecret (a Secret with the access key id and secret access key)" }}
{{- end }}
{{- if and (ne $s.type "s3") (or (not (hasPrefix "/" $s.mountPath)) (eq $s.mountPath "/")) }}
{{- $errors = append $errors (printf "storage.mountPath %q must be an absolute folder other than /" $s.mountPath) }}
{{- end }}
{{- $a := .Values.autoscaling }}
{{- if not (has $a.mode (list "none" "keda" "hpa")) }}
{{- $errors = append $errors (printf "autoscaling.mode %q is unknown; use none, keda or hpa" $a.mode) }}
{{- end }}
{{- if and (ne $a.mode "none") (gt (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- $errors = append $errors (printf "autoscaling.minReplicas (%v) exceeds autoscaling.maxReplicas (%v)" $a.minReplicas $a.maxReplicas) }}
{{- end }}
{{- if and (eq $a.mode "keda") (not (has $a.keda.trigger (list "metricsApi" "prometheus"))) }}
{{- $errors = append $errors (printf "autoscaling.keda.trigger %q is unknown; use metricsApi or prometheus" $a.keda.trigger) }}
{{- end }}
{{- if and (eq $a.mode "hpa") (lt (int $a.minReplicas) 1) }}
{{- $errors = append $errors "autoscaling.minReplicas is 0 with mode hpa; an HPA cannot scale to zero: use mode keda, or minReplicas 1" }}
{{- end }}
{{- if and (eq $a.mode "hpa") (not (has $a.hpa.metric (list "external" "cpu"))) }}
{{- $errors = append $errors (printf "autoscaling.hpa.metric %q is unknown; use external or cpu" $a.hpa.metric) }}
{{- end }}
{{- if and (eq $a.mode "keda") (eq $a.keda.trigger "prometheus") (not (contains "%s" $a.keda.prometheus.query)) }}
{{- $errors = append $errors "autoscaling.keda.prometheus.query must contain %s where the queue name goes" }}
{{- end }}
{{- if and .Values.beat.enabled (not .Values.beat.schedule) }}
{{- $errors = append $errors "beat.enabled is true but beat.schedule is empty; list the periodic jobs or disable beat" }}
{{- end }}
{{- if and .Values.producer.ingress.enabled (not .Values.producer.ingress.host) }}
{{- $errors = append $errors "producer.ingress.enabled is true but producer.ingress.host is empty" }}
{{- end }}
{{- $m := .Values.metrics }}
{{- if and $m.prometheusRule.enabled (not (.Files.Get "files/prometheus-rules.yaml")) }}
{{- $errors = append $errors "metrics.prometheusRule.enabled is true but the chart has no files/prometheus-rules.yaml; this chart build is incomplete" }}
{{- end }}
{{- if and $m.grafanaDashboard.enabled (not (.Files.Get "files/grafana-dashboard.json")) }}
{{- $errors = append $errors "metrics.grafanaDashboard.enabled is true but the chart has no files/grafana-dashboard.json; this chart build is incomplete" }}
{{- end }}
{{- if $errors }}
{{- fail (printf "\n\nbatchgrid: the values need fixing:\n  - %s\n" (join "\n  - " $errors)) }}
{{- end }}
{{- end }}
