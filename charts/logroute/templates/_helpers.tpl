{{/* Chart name, overridable. */}}
{{- define "logroute.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: <release>-<chart>, or the release name when it
already contains the chart name. Truncated so that "-controller" still fits in 63. */}}
{{- define "logroute.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "logroute.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "logroute.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "logroute.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "agent"). */}}
{{- define "logroute.selectorLabels" -}}
app.kubernetes.io/name: {{ include "logroute.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Full labels of one component's objects. */}}
{{- define "logroute.componentLabels" -}}
{{ include "logroute.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* ServiceAccount name of one component. */}}
{{- define "logroute.serviceAccountName" -}}
{{- $sa := index .ctx.Values .component "serviceAccount" -}}
{{- if $sa.create -}}
{{- default (printf "%s-%s" (include "logroute.fullname" .ctx) .component) $sa.name -}}
{{- else -}}
{{- required (printf "%s.serviceAccount.name is required when %s.serviceAccount.create is false" .component .component) $sa.name -}}
{{- end -}}
{{- end -}}

{{/* The image reference. */}}
{{- define "logroute.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by both components: (dict "ctx" $ "component" "agent"). */}}
{{- define "logroute.commonEnv" -}}
{{- $values := index .ctx.Values .component -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: LOGROUTE_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: LOGROUTE_METRICS_ADDR
  value: {{ printf "0.0.0.0:%d" (int $values.metricsPort) | quote }}
- name: LOGROUTE_LOG
  value: {{ default .ctx.Values.log.level $values.logLevel | quote }}
- name: LOGROUTE_LOG_FORMAT
  value: {{ .ctx.Values.log.format | quote }}
{{- end -}}
