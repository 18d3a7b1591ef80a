{{/* The release's full name, cut to the 63 characters a label value allows. */}}
{{- define "lockkeeper.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lockkeeper.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "lockkeeper.zookeeperSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: zookeeper
{{- end -}}

{{/* Labels every object of the chart carries. */}}
{{- define "lockkeeper.commonLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: lockkeeper
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "lockkeeper.labels" -}}
{{ include "lockkeeper.commonLabels" . }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "lockkeeper.zookeeperLabels" -}}
{{ include "lockkeeper.commonLabels" . }}
app.kubernetes.io/component: zookeeper
{{- end -}}

{{- define "lockkeeper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lockkeeper.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespace watched when watch.scope is Namespace. */}}
{{- define "lockkeeper.watchNamespace" -}}
{{- default .Release.Namespace .Values.watch.namespace -}}
{{- end -}}

{{- define "lockkeeper.zookeeperName" -}}
{{- printf "%s-zookeeper" (include "lockkeeper.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The ensemble the controller connects to: zookeeper.connect, or the bundled one. */}}
{{- define "lockkeeper.zookeeperConnect" -}}
{{- if .Values.zookeeper.bundled.enabled -}}
{{- if .Values.zookeeper.connect -}}
{{- fail "set either zookeeper.connect or zookeeper.bundled.enabled=true, not both" -}}
{{- end -}}
{{- printf "%s.%s.svc:2181" (include "lockkeeper.zookeeperName" .) .Release.Namespace -}}
{{- else -}}
{{- required "zookeeper.connect is required (host:port[,host:port...] of your ZooKeeper ensemble), or set zookeeper.bundled.enabled=true to run one" .Values.zookeeper.connect -}}
{{- end -}}
{{- end -}}
